package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

func TestParseLevel(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want zerolog.Level
		ok   bool
	}{
		{"debug", zerolog.DebugLevel, true},
		{"info", zerolog.InfoLevel, true},
		{"", zerolog.InfoLevel, true},
		{"WARN", zerolog.WarnLevel, true},
		{"warning", zerolog.WarnLevel, true},
		{"error", zerolog.ErrorLevel, true},
		{"trace", zerolog.NoLevel, false},
		{"verbose", zerolog.NoLevel, false},
		{"disabled", zerolog.NoLevel, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseLevel(tc.in)
			if (err == nil) != tc.ok || got != tc.want {
				t.Fatalf("ParseLevel(%q) = %v, %v", tc.in, got, err)
			}
			if err != nil && !strings.Contains(err.Error(), Levels) {
				t.Errorf("error %q does not name the levels", err)
			}
		})
	}
}

func TestNewFormats(t *testing.T) {
	for _, tc := range []struct {
		name, format string
		json         bool
	}{
		{"auto on a pipe is JSON", "", true},
		{"auto spelled out", "auto", true},
		{"json", "json", true},
		{"console", "console", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			l, err := New(&buf, "info", tc.format)
			if err != nil {
				t.Fatal(err)
			}
			mp := Component(l, "mp")
			mp.Info().Str(FieldSerial, "0A").Msg("hello")
			l.Debug().Msg("below the level")
			var line map[string]any
			isJSON := json.Unmarshal(buf.Bytes(), &line) == nil
			if isJSON != tc.json {
				t.Fatalf("format %q wrote %q", tc.format, buf.String())
			}
			if strings.Contains(buf.String(), "below the level") {
				t.Errorf("a debug line at level info: %q", buf.String())
			}
			if isJSON && (line[FieldComponent] != "mp" || line[FieldSerial] != "0A" || line["message"] != "hello" || line["time"] == nil) {
				t.Errorf("JSON line %v lacks the shared fields", line)
			}
		})
	}
	if _, err := New(&bytes.Buffer{}, "info", "xml"); err == nil || !strings.Contains(err.Error(), "json") {
		t.Errorf("format xml: %v, want a refusal naming the formats", err)
	}
	if _, err := New(&bytes.Buffer{}, "loud", ""); err == nil {
		t.Error("level loud accepted")
	}
}
