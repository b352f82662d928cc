package mp

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// The channel rows of an MP that stopped heartbeating (killed) are not live: device show
// does not count them and clone detection does not compare with them; those of an MP that
// heartbeats are.
func TestChannelsOfDeadMPAreNotLive(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	f := newFixture(t, db, Options{})
	pc := f.device(t, "pc-failed-over")
	id := deviceID(pc)
	ctx := context.Background()
	// The device was connected from another address to an MP that was killed a minute ago.
	dead := time.Now().Add(-time.Minute).Unix()
	if _, err := db.Exec(ctx, `INSERT INTO management_points (id, mode, intranet_url, internet_url, last_seen) VALUES ('mp-killed', 'both', '', '', ?)`, dead); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, `INSERT INTO notify_connections (conn_id, device_id, mp_id, remote_ip, since) VALUES ('old', ?, 'mp-killed', '192.0.2.7', ?)`, id, dead); err != nil {
		t.Fatal(err)
	}
	dialNotify(t, f, &pc) // it fails over to this MP
	waitConnected(t, f.mp, id, 1)
	d, err := f.mp.Device(ctx, id)
	if err != nil || len(d.Warnings) != 0 {
		t.Fatalf("failing over from a dead MP flagged the device: %v %v", d.Warnings, err)
	}
	// The same row counts while its MP heartbeats.
	if _, err := db.Exec(ctx, `UPDATE management_points SET last_seen = ? WHERE id = 'mp-killed'`, time.Now().Unix()); err != nil {
		t.Fatal(err)
	}
	waitConnected(t, f.mp, id, 2)
}

// GET /v1/locate lists only MPs that heartbeat: a killed MP is not offered to devices.
func TestLocateListsLiveMPs(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	f := newFixture(t, db, Options{})
	pc := f.device(t, "pc-locating")
	ctx := context.Background()
	for id, seen := range map[string]time.Time{"mp-killed": time.Now().Add(-time.Minute), "mp-alive": time.Now()} {
		if _, err := db.Exec(ctx, `INSERT INTO management_points (id, mode, intranet_url, internet_url, last_seen) VALUES (?, 'both', ?, ?, ?)`,
			id, "https://"+id+".corp:9443", "https://"+id+".example:443", seen.Unix()); err != nil {
			t.Fatal(err)
		}
	}
	var loc wire.Locate
	if status, _ := call(t, f.client(&pc), "GET", f.intranet+"/v1/locate", nil, &loc); status != 200 {
		t.Fatalf("locate: %d", status)
	}
	if !slices.Contains(loc.MPs, "https://mp-alive.corp:9443") || slices.Contains(loc.MPs, "https://mp-killed.corp:9443") {
		t.Errorf("locate lists %v: want the live MP and not the killed one", loc.MPs)
	}
}
