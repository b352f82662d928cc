package spool

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

func msg(i int) wire.StatusMessage {
	return wire.StatusMessage{ID: fmt.Sprintf("m%03d", i), Time: time.Unix(int64(i), 0).UTC(), Severity: "info", Component: "test", Text: fmt.Sprint(i)}
}

func TestOrderAckAndRestart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 5; i++ {
		if _, err := s.Add(msg(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Add(msg(3)); err != nil || s.Len() != 5 {
		t.Fatalf("a message added twice is kept once: len %d %v", s.Len(), err)
	}
	got, _ := s.Peek(3)
	if len(got) != 3 || got[0].ID != "m001" || got[2].ID != "m003" {
		t.Fatalf("Peek = %v", got)
	}
	if err := s.Ack([]string{"m001", "m002", "unknown"}); err != nil {
		t.Fatal(err)
	}
	// a restart (and a crash mid-write) keeps exactly the unacknowledged messages, in order
	if err := os.WriteFile(filepath.Join(dir, ".tmp-123"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, _ = s2.Peek(10)
	if len(got) != 3 || got[0].ID != "m003" || got[2].ID != "m005" {
		t.Fatalf("after restart: %v", got)
	}
	if _, err := s2.Add(msg(6)); err != nil {
		t.Fatal(err)
	}
	got, _ = s2.Peek(10)
	if got[len(got)-1].ID != "m006" {
		t.Fatalf("new message not last: %v", got)
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("spool directory mode %v", st.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		info, _ := e.Info()
		if info.Mode().Perm() != 0o600 || e.Name()[0] == '.' {
			t.Errorf("%s: mode %v", e.Name(), info.Mode().Perm())
		}
	}
}

func TestBoundDropsOldest(t *testing.T) {
	s, err := Open(t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 5; i++ {
		if _, err := s.Add(msg(i)); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := s.Peek(10)
	if len(got) != 3 || got[0].ID != "m003" || s.Dropped() != 2 {
		t.Fatalf("bounded spool: %v dropped %d", got, s.Dropped())
	}
	if m, _ := s.Add(wire.StatusMessage{Severity: "info", Time: time.Now()}); m.ID == "" {
		t.Error("no id assigned")
	}
}

// A message the MP would refuse never enters the queue, where it would block the others.
func TestRefusesWhatTheMPRefuses(t *testing.T) {
	s, err := Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []wire.StatusMessage{
		{Severity: "panic", Time: time.Now(), Text: "x"},
		{Severity: "info", Time: time.Now(), Component: string(make([]byte, 65))},
		{Severity: "info", Time: time.Now(), Text: string(make([]byte, wire.MaxStatusText+1))},
		{Severity: "info", Text: "no time"},
	} {
		if _, err := s.Add(m); err == nil {
			t.Errorf("spooled %+v", m)
		}
	}
	if s.Len() != 0 {
		t.Errorf("%d refused messages in the spool", s.Len())
	}
}
