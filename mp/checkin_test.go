package mp

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// lockedBuffer is a log sink the MP's goroutines may write to while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestCheckinLocationFromListener: the location the MP records is the listener the
// check-in arrived on, never what the device claims; the claim is kept beside it, and a
// mismatch becomes one device warning and one log line, however often the device checks in.
func TestCheckinLocationFromListener(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		f := newFixture(t, db, Options{})
		var logs lockedBuffer
		f.mp.log = zerolog.New(&logs) // before any request: the check-in path logs through it
		pc := f.device(t, "pc-claims")
		c := f.client(&pc)
		id := deviceID(pc)
		ctx := context.Background()

		for range 3 {
			if status, e := call(t, c, "POST", f.internet+"/v1/checkin", wire.Checkin{Location: wire.Intranet}, nil); status != 200 {
				t.Fatalf("checkin: %d %+v", status, e)
			}
			d, err := f.mp.Device(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if d.LastLocation != wire.Internet || d.ClaimedLocation != wire.Intranet {
				t.Fatalf("on the internet listener claiming intranet: location %q claimed %q, want internet and intranet", d.LastLocation, d.ClaimedLocation)
			}
			if len(d.Warnings) != 1 || !strings.Contains(d.Warnings[0], "claims intranet") || !strings.Contains(d.Warnings[0], "internet listener") {
				t.Fatalf("warnings %q, want one location mismatch", d.Warnings)
			}
		}
		if n := strings.Count(logs.String(), "\"location mismatch"); n != 1 {
			t.Errorf("the mismatch was logged %d times, want once:\n%s", n, logs.String())
		}

		// the agent's claim agrees with the listener: recorded as is, the old warning stays
		if status, e := call(t, c, "POST", f.intranet+"/v1/checkin", wire.Checkin{Location: wire.Intranet}, nil); status != 200 {
			t.Fatalf("checkin: %d %+v", status, e)
		}
		d, err := f.mp.Device(ctx, id)
		if err != nil || d.LastLocation != wire.Intranet || d.ClaimedLocation != wire.Intranet || len(d.Warnings) != 1 {
			t.Fatalf("on the intranet listener claiming intranet: %+v %v", d, err)
		}
		ds, err := f.mp.Devices(ctx)
		if err != nil || len(ds) != 1 || ds[0].LastLocation != wire.Intranet || ds[0].ClaimedLocation != wire.Intranet {
			t.Fatalf("device list: %+v %v", ds, err)
		}
	})
}
