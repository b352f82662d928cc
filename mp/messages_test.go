package mp

import (
	"fmt"
	"github.com/ibcm-project/ibcm/internal/access"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// An admin reads a device's status messages, newest last, from a time on, at most a page;
// bad queries get a 400 JSON error that says what is expected.
func TestDeviceMessages(t *testing.T) {
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{})
	pc := f.device(t, "pc-msg")
	id := deviceID(pc)
	admin := f.user(t, "alice", access.FullAdministrator)
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var batch wire.StatusBatch
	for i := range 5 { // sent out of order: the answer sorts by time
		at := base.Add(time.Duration(4-i) * time.Hour)
		batch.Messages = append(batch.Messages, wire.StatusMessage{ID: fmt.Sprintf("m%d", 4-i), Time: at, Severity: "info",
			Component: "test", Text: fmt.Sprintf("message %d", 4-i), Fields: map[string]string{"n": fmt.Sprint(4 - i)}})
	}
	if status, e := call(t, f.client(&pc), "POST", f.intranet+"/v1/status", batch, nil); status != 200 {
		t.Fatalf("status upload: %d %+v", status, e)
	}
	get := func(query string) (int, wire.Error, wire.DeviceMessages) {
		t.Helper()
		var out wire.DeviceMessages
		status, e := call(t, f.client(&admin), "GET", f.intranet+"/v1/admin/devices/"+id+"/messages"+query, nil, &out)
		return status, e, out
	}
	ids := func(ms wire.DeviceMessages) string {
		var s []string
		for _, m := range ms.Messages {
			s = append(s, m.ID)
		}
		return strings.Join(s, ",")
	}
	for _, tc := range []struct {
		name, query, want string
		truncated         bool
	}{
		{"all, newest last", "", "m0,m1,m2,m3,m4", false},
		{"since", "?since=" + url.QueryEscape(base.Add(2*time.Hour).Format(time.RFC3339)), "m2,m3,m4", false},
		{"since with an offset", "?since=" + url.QueryEscape(base.Add(2*time.Hour).In(time.FixedZone("", 3600)).Format(time.RFC3339)), "m2,m3,m4", false},
		{"limit keeps the newest", "?limit=2", "m3,m4", true},
		{"since and limit", "?limit=3&since=" + url.QueryEscape(base.Add(time.Hour).Format(time.RFC3339)), "m2,m3,m4", true},
		{"since after the last", "?since=" + url.QueryEscape(base.Add(5*time.Hour).Format(time.RFC3339)), "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, e, out := get(tc.query)
			if status != 200 || ids(out) != tc.want || out.Truncated != tc.truncated || out.DeviceID != id {
				t.Fatalf("HTTP %d %+v: %q truncated %v, want %q truncated %v", status, e, ids(out), out.Truncated, tc.want, tc.truncated)
			}
		})
	}
	// within one second, the order is the messages' own, not the order they arrived in
	late := base.Add(5 * time.Hour)
	second := wire.StatusBatch{Messages: []wire.StatusMessage{
		{ID: "s2", Time: late.Add(200 * time.Millisecond), Severity: "info", Component: "test", Text: "second"},
		{ID: "s1", Time: late.Add(100 * time.Millisecond), Severity: "info", Component: "test", Text: "first"},
	}}
	if status, e := call(t, f.client(&pc), "POST", f.intranet+"/v1/status", second, nil); status != 200 {
		t.Fatalf("status upload: %d %+v", status, e)
	}
	if status, e, out := get("?since=" + url.QueryEscape(late.Format(time.RFC3339))); status != 200 || ids(out) != "s1,s2" || !out.Messages[1].Time.Equal(late.Add(200*time.Millisecond)) {
		t.Errorf("same second: HTTP %d %+v %q, want s1,s2 with their times", status, e, ids(out))
	}
	_, _, all := get("")
	if m := all.Messages[4]; m.ID != "m4" || m.Text != "message 4" || m.Fields["n"] != "4" || !m.Time.Equal(base.Add(4*time.Hour)) || m.ReceivedAt.IsZero() {
		t.Errorf("stored message = %+v", m)
	}

	for _, tc := range []struct {
		name, query, want string
	}{
		{"duration for since", "?since=2h", "RFC 3339"},
		{"date only", "?since=2026-03-01", "RFC 3339"},
		{"limit zero", "?limit=0", "from 1 to 1000"},
		{"limit over the cap", "?limit=1001", "from 1 to 1000"},
		{"limit not a number", "?limit=ten", "from 1 to 1000"},
		{"since twice", "?since=2026-03-01T00:00:00Z&since=2026-03-02T00:00:00Z", "give it once"},
		{"unknown parameter", "?after=2026-03-01T00:00:00Z", "since and limit are allowed"},
		{"not URL-encoded", "?since=%zz", "URL-encoded"},
		{"long junk is cut", "?limit=" + strings.Repeat("9", 500), "…"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, e, _ := get(tc.query)
			if status != 400 || e.Error.Code != "bad_request" || !strings.Contains(e.Error.Message, tc.want) || len(e.Error.Message) > 200 {
				t.Fatalf("HTTP %d %+v, want 400 bad_request saying %q", status, e, tc.want)
			}
		})
	}
	if status, e := call(t, f.client(&admin), "GET", f.intranet+"/v1/admin/devices/no-such-device/messages", nil, nil); status != 404 || e.Error.Code != "not_found" {
		t.Errorf("unknown device: %d %+v", status, e)
	}
	if status, e := call(t, f.client(&pc), "GET", f.intranet+"/v1/admin/devices/"+id+"/messages", nil, nil); status != 403 || e.Error.Code != "not_admin" {
		t.Errorf("a device on the admin route: %d %+v", status, e)
	}
}

// device list and device show tell the same about a device: live channels, groups,
// warnings (list used to say 0 channels and no groups for every device).
func TestDeviceListAgreesWithShow(t *testing.T) {
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{})
	pc := f.device(t, "pc-live")
	idle := f.device(t, "pc-idle")
	if status, _ := call(t, f.client(&idle), "GET", f.intranet+"/v1/whoami", nil, nil); status != 200 {
		t.Fatal("whoami")
	}
	ch := live(t, f.intranet, f.client(&pc))
	defer ch.ws.CloseNow()
	waitConnected(t, f.mp, deviceID(pc), 1)
	if err := f.mp.CreateGroup(t.Context(), wire.Group{Name: "kiosks"}); err != nil {
		t.Fatal(err)
	}
	if err := f.mp.SetMember(t.Context(), "kiosks", deviceID(pc), true); err != nil {
		t.Fatal(err)
	}
	admin := f.user(t, "alice", access.FullAdministrator)
	var list []wire.Device
	if status, e := call(t, f.client(&admin), "GET", f.intranet+"/v1/admin/devices", nil, &list); status != 200 || len(list) != 2 {
		t.Fatalf("list: %d %+v %d devices", status, e, len(list))
	}
	for _, d := range list {
		var shown wire.Device
		if status, e := call(t, f.client(&admin), "GET", f.intranet+"/v1/admin/devices/"+d.ID, nil, &shown); status != 200 {
			t.Fatalf("show %s: %d %+v", d.ID, status, e)
		}
		// last_seen moves with every request: compare the rest
		d.LastSeen, shown.LastSeen = time.Time{}, time.Time{}
		if fmt.Sprintf("%+v", d) != fmt.Sprintf("%+v", shown) {
			t.Errorf("device %s:\nlist %+v\nshow %+v", d.Name, d, shown)
		}
		want := map[string]int{"pc-live": 1, "pc-idle": 0}[d.Name]
		if d.Connected != want || (d.Name == "pc-live") != (strings.Join(d.Groups, ",") == "kiosks") {
			t.Errorf("device %s in the list: %d channels, groups %v; want %d", d.Name, d.Connected, d.Groups, want)
		}
	}
}

// FuzzMessagesQuery: whatever the query of GET /v1/admin/devices/{id}/messages, the
// parser returns a limit within the page size or an error; never a panic.
func FuzzMessagesQuery(f *testing.F) {
	for _, s := range []string{"", "since=2026-03-01T00:00:00Z", "limit=5", "since=2h", "limit=0&limit=1", "x=1", "since=%zz", "limit=-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		_, limit, err := messagesQuery(q)
		if err == nil && (limit < 1 || limit > wire.MaxMessagesPage) {
			t.Fatalf("%q: limit %d accepted", raw, limit)
		}
	})
}
