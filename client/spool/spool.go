// Package spool owns the agent's durable queue of status messages: a message added is on
// disk before Add returns, survives restarts, is handed out oldest first, and is removed only
// when the management point acknowledges it. The queue is bounded: past its limit the oldest
// messages are dropped and counted.
//
// Each message is one file named by a sequence number, written with internal/atomicfile, so
// a crash leaves either the whole message or none.
package spool

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/ibcm-project/ibcm/internal/atomicfile"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// Spool is a directory of pending status messages.
type Spool struct {
	dir string
	max int

	mu      sync.Mutex
	seqs    []uint64          // pending, oldest first
	ids     map[string]uint64 // message id -> sequence
	next    uint64
	dropped int
}

const suffix = ".json"

// Open opens (creating, 0700) the spool in dir, holding at most max messages (10000 when 0).
func Open(dir string, max int) (*Spool, error) {
	if max <= 0 {
		max = 10000
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("opening spool: %w", err)
	}
	s := &Spool{dir: dir, max: max, ids: map[string]uint64{}, next: 1}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("opening spool: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") { // an interrupted atomicfile.Write
			_ = os.Remove(filepath.Join(dir, name))
			continue
		}
		seq, err := strconv.ParseUint(strings.TrimSuffix(name, suffix), 10, 64)
		if err != nil || !strings.HasSuffix(name, suffix) {
			continue
		}
		msg, err := s.read(seq)
		if err != nil { // unreadable: not ours to deliver
			_ = os.Remove(filepath.Join(dir, name))
			continue
		}
		s.seqs = append(s.seqs, seq)
		s.ids[msg.ID] = seq
		if seq >= s.next {
			s.next = seq + 1
		}
	}
	sort.Slice(s.seqs, func(i, j int) bool { return s.seqs[i] < s.seqs[j] })
	return s, nil
}

func (s *Spool) path(seq uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%020d%s", seq, suffix))
}

func (s *Spool) read(seq uint64) (wire.StatusMessage, error) {
	var m wire.StatusMessage
	b, err := os.ReadFile(s.path(seq))
	if err != nil {
		return m, err
	}
	return m, json.Unmarshal(b, &m)
}

// Add stores a message; when it has no id it gets a random one. It returns once the message
// is on disk. A message the MP would refuse (wire.StatusMessage.Check) is refused here.
// Past the limit the oldest message is dropped.
func (s *Spool) Add(m wire.StatusMessage) (wire.StatusMessage, error) {
	if m.ID == "" {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		m.ID = hex.EncodeToString(b)
	}
	if err := m.Check(); err != nil { // what the MP would refuse would block the queue
		return m, fmt.Errorf("status message not spooled: %w", err)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return m, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.ids[m.ID]; dup {
		return m, nil
	}
	seq := s.next
	if err := atomicfile.Write(s.path(seq), b, 0o600); err != nil {
		return m, fmt.Errorf("spooling status message: %w", err)
	}
	s.next++
	s.seqs = append(s.seqs, seq)
	s.ids[m.ID] = seq
	for len(s.seqs) > s.max {
		old := s.seqs[0]
		if msg, err := s.read(old); err == nil {
			delete(s.ids, msg.ID)
		}
		_ = os.Remove(s.path(old))
		s.seqs = s.seqs[1:]
		s.dropped++
	}
	return m, nil
}

// Peek returns up to n messages, oldest first, without removing them.
func (s *Spool) Peek(n int) ([]wire.StatusMessage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []wire.StatusMessage
	for _, seq := range s.seqs {
		if len(out) == n {
			break
		}
		m, err := s.read(seq)
		if err != nil {
			return nil, fmt.Errorf("reading spooled message %d: %w", seq, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// Ack removes the messages with these ids (the ones the MP acknowledged).
func (s *Spool) Ack(ids []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	gone := map[uint64]bool{}
	for _, id := range ids {
		seq, ok := s.ids[id]
		if !ok {
			continue
		}
		if err := os.Remove(s.path(seq)); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("removing acknowledged message: %w", err)
		}
		delete(s.ids, id)
		gone[seq] = true
	}
	kept := s.seqs[:0]
	for _, seq := range s.seqs {
		if !gone[seq] {
			kept = append(kept, seq)
		}
	}
	s.seqs = kept
	return nil
}

// Len returns how many messages wait.
func (s *Spool) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seqs)
}

// Dropped returns how many messages were dropped for the limit since Open.
func (s *Spool) Dropped() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}
