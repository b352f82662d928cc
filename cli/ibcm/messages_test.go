package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Time // zero: refused
	}{
		{"2h", now.Add(-2 * time.Hour)},
		{"90m", now.Add(-90 * time.Minute)},
		{"2026-02-28T08:00:00Z", time.Date(2026, 2, 28, 8, 0, 0, 0, time.UTC)},
		{"2026-02-28T09:00:00+01:00", time.Date(2026, 2, 28, 8, 0, 0, 0, time.UTC)},
		{"-2h", time.Time{}},
		{"0s", time.Time{}},
		{"2d", time.Time{}},
		{"yesterday", time.Time{}},
		{"2026-02-28", time.Time{}},
		{"", time.Time{}},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseSince(tc.in, now)
			if tc.want.IsZero() {
				if err == nil || !strings.Contains(err.Error(), "--since") {
					t.Fatalf("parseSince(%q) = %v, %v; want a refusal", tc.in, got, err)
				}
				return
			}
			if err != nil || !got.Equal(tc.want) {
				t.Fatalf("parseSince(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}
