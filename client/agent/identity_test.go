package agent

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
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

// TestAgentKeepsIdentityWhenItsDirectoryIsNotItsOwn: the agent runs only in a state
// directory it owns (New), and an identity that shows up in one it does not own any more
// (the directory renamed away and another user's put in its place, where the parent lets
// that user rename) is not adopted: root's Load would read it for `ibcm-client status`.
func TestAgentKeepsIdentityWhenItsDirectoryIsNotItsOwn(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root to give a directory away (make test runs as root)")
	}
	s := catest.Start(t)
	parent := t.TempDir()
	dir := filepath.Join(parent, "state")
	before := enrolled(t, s, dir)
	log := &syncBuffer{}
	runAgent(t, dir, log)

	// Another user's identity in a directory of its own, swapped in for the agent's.
	other := filepath.Join(parent, "other")
	if _, err := client.Enroll(context.Background(), client.EnrollOptions{Dir: other, CAURL: s.URL, RootSHA256: s.Pin,
		Token: s.Token(t, ca.TokenSpec{Subject: "pc-02"})}); err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	if err := filepath.Walk(other, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, 65534, 65534)
	}); err != nil {
		t.Fatal(err)
	}
	orig := filepath.Join(parent, "orig")
	if err := os.Rename(dir, orig); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(other, dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // before the agent stops (cleanups run last first): its socket is in orig
		if err := os.Rename(dir, other); err != nil {
			t.Error(err)
		}
		if err := os.Rename(orig, dir); err != nil {
			t.Error(err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		out := log.String()
		if strings.Contains(out, "new identity in the state directory") {
			t.Fatalf("the agent (device %s) took the identity in a directory owned by uid 65534:\n%s", before.DeviceID, out)
		}
		if strings.Contains(out, "owned by uid 65534") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent said nothing of the directory it does not own:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond) // polling the condition itself: the agent's log
	}
}
