package agent

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/ca/catest"
	"github.com/ibcm-project/ibcm/client"
)

// TestAgentSwitchesToIdentityWrittenIntoItsDirectory: an identity another writer commits
// into the state directory of a running agent becomes the agent's without a restart.
func TestAgentSwitchesToIdentityWrittenIntoItsDirectory(t *testing.T) {
	s := catest.Start(t)
	dir := t.TempDir()
	before := enrolled(t, s, dir)
	runAgent(t, dir, io.Discard)

	// Another writer (the agent holds the lock; client.Enroll itself takes none).
	after, err := client.Enroll(context.Background(), client.EnrollOptions{Dir: dir, CAURL: s.URL, RootSHA256: s.Pin,
		Token: s.Token(t, ca.TokenSpec{Subject: "pc-02"}), Force: true})
	if err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	if after.DeviceID == before.DeviceID {
		t.Fatal("the new enrollment has the old device id")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := Query(context.Background(), dir)
		if err != nil {
			t.Fatal(err)
		}
		if st.DeviceID == after.DeviceID && st.Serial == after.SerialHex() && st.Subject == "pc-02" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent still reports device %s serial %s, want %s %s", st.DeviceID, st.Serial, after.DeviceID, after.SerialHex())
		}
		time.Sleep(20 * time.Millisecond) // polling the condition itself: the agent's status
	}
}
