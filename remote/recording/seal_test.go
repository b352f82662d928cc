package recording

import (
	"bytes"
	"testing"
)

func TestSealOpen(t *testing.T) {
	priv, pub, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := PublicOf(priv); p != pub {
		t.Fatalf("PublicOf = %s, want %s", p, pub)
	}
	msg := []byte(`{"version": 2}` + "\n" + `[0.1, "o", "hello"]`)
	sealed, err := Seal(pub, "s1", msg)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, []byte("hello")) {
		t.Fatal("the sealed recording shows its plaintext")
	}
	got, err := Open(priv, "s1", sealed)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	if _, err := Open(priv, "s2", sealed); err == nil {
		t.Fatal("a recording opened as another session's")
	}
	other, _, _ := NewKey()
	if _, err := Open(other, "s1", sealed); err == nil {
		t.Fatal("a recording opened with another key")
	}
	sealed[len(sealed)-1] ^= 1
	if _, err := Open(priv, "s1", sealed); err == nil {
		t.Fatal("a changed recording opened")
	}
}
