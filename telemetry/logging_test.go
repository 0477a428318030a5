package telemetry

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"go.uber.org/zap"
)

func TestNewLoggerValidation(t *testing.T) {
	tests := []struct {
		level, format string
		wantErr       bool
	}{
		{"", "", false},
		{"debug", "json", false},
		{"INFO", "console", false},
		{" warn ", "JSON", false},
		{"error", "console", false},
		{"verbose", "json", true},
		{"warning", "json", true},
		{"info", "xml", true},
		{"info", "text", true},
	}
	for _, tt := range tests {
		log, err := NewLogger(tt.level, tt.format)
		if tt.wantErr {
			if !errors.Is(err, ErrOption) {
				t.Errorf("NewLogger(%q, %q) error = %v, want ErrOption", tt.level, tt.format, err)
			}
			if log != nil {
				t.Errorf("NewLogger(%q, %q) returned a logger with an error", tt.level, tt.format)
			}
			continue
		}
		if err != nil || log == nil {
			t.Errorf("NewLogger(%q, %q) = %v, %v; want a logger", tt.level, tt.format, log, err)
		}
	}
}

func TestNewLoggerLevelAndFormat(t *testing.T) {
	var buf bytes.Buffer
	log, err := newLogger("warn", "json", &buf)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("dropped")
	log.Warn("kept", zap.String("k", "v"))
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("got %d lines, want 1: %q", len(lines), buf.String())
	}
	var entry map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &entry); err != nil {
		t.Fatalf("not JSON: %v: %s", err, lines[0])
	}
	if entry["msg"] != "kept" || entry["level"] != "warn" || entry["k"] != "v" || entry["ts"] == nil {
		t.Errorf("unexpected entry %v", entry)
	}

	buf.Reset()
	log, err = newLogger("debug", "console", &buf)
	if err != nil {
		t.Fatal(err)
	}
	log.Debug("hello")
	if out := buf.String(); !strings.Contains(out, "DEBUG") || !strings.Contains(out, "hello") || strings.HasPrefix(out, "{") {
		t.Errorf("console output = %q", out)
	}
}
