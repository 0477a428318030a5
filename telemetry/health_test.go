package telemetry

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp.StatusCode, strings.TrimSpace(string(body))
}

func TestHealthState(t *testing.T) {
	var h Health // zero value: live, not ready
	if h.Ready() || h.Live() != nil {
		t.Fatalf("zero Health: ready=%v live=%v", h.Ready(), h.Live())
	}
	h.SetReady(true)
	h.SetLive(false)
	if !errors.Is(h.Live(), ErrNotLive) {
		t.Errorf("SetLive(false): Live() = %v", h.Live())
	}
	root := errors.New("model session lost")
	h.Fail(root)
	h.Fail(errors.New("later error"))
	if h.Live() != root || h.Ready() {
		t.Errorf("after Fail: live=%v ready=%v; want root cause, not ready", h.Live(), h.Ready())
	}
	h.SetLive(true)
	if h.Live() != nil {
		t.Errorf("SetLive(true): Live() = %v", h.Live())
	}
	h.Fail(nil)
	if !errors.Is(h.Live(), ErrNotLive) {
		t.Errorf("Fail(nil): Live() = %v", h.Live())
	}
}

func TestServer(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg, "esm2", testLabels)
	if err != nil {
		t.Fatal(err)
	}
	m.RecordIn()
	h := NewHealth()
	srv, err := NewServer("127.0.0.1:0", reg, h, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if srv.Addr() != "" {
		t.Errorf("Addr before Start = %q", srv.Addr())
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	if err := srv.Start(); !errors.Is(err, ErrServerStarted) {
		t.Errorf("second Start = %v, want ErrServerStarted", err)
	}
	base := "http://" + srv.Addr()
	if strings.HasSuffix(base, ":0") {
		t.Fatalf("Addr() = %q, want the bound port", srv.Addr())
	}

	expect := func(path string, wantCode int, wantBody string) {
		t.Helper()
		code, body := get(t, base+path)
		if code != wantCode || body != wantBody {
			t.Errorf("GET %s = %d %q, want %d %q", path, code, body, wantCode, wantBody)
		}
	}
	expect("/healthz", http.StatusOK, "ok")
	expect("/readyz", http.StatusServiceUnavailable, "not ready")
	h.SetReady(true)
	expect("/readyz", http.StatusOK, "ok")
	h.Fail(errors.New("nats: connection closed"))
	expect("/healthz", http.StatusServiceUnavailable, "nats: connection closed")
	expect("/readyz", http.StatusServiceUnavailable, "not ready")

	code, body := get(t, base+"/metrics")
	if code != http.StatusOK || !strings.Contains(body, `seqembed_records_in_total{model="esm2"} 1`) {
		t.Errorf("GET /metrics = %d, body lacks records_in_total:\n%s", code, body)
	}
	if code, _ := get(t, base+"/nope"); code != http.StatusNotFound {
		t.Errorf("GET /nope = %d, want 404", code)
	}
	resp, err := http.Post(base+"/healthz", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz = %d, want 405", resp.StatusCode)
	}
}

func TestServerLifecycle(t *testing.T) {
	reg := prometheus.NewRegistry()
	srv, err := NewServer("127.0.0.1:0", reg, NewHealth(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := srv.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown before Start = %v", err)
	}
	if err := srv.Start(); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Start after Shutdown = %v, want ErrServerClosed", err)
	}

	srv, err = NewServer("127.0.0.1:0", reg, NewHealth(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	addr := srv.Addr()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + addr + "/healthz"); err == nil {
		t.Error("server still answering after Shutdown")
	}

	// The port is free again, so a second server can bind it; binding a busy
	// port fails at Start.
	busy, err := NewServer("127.0.0.1:0", reg, NewHealth(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := busy.Start(); err != nil {
		t.Fatal(err)
	}
	defer busy.Shutdown(ctx)
	clash, err := NewServer(busy.Addr(), reg, NewHealth(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := clash.Start(); err == nil {
		t.Error("Start on a busy port succeeded")
		clash.Shutdown(ctx)
	}
}

func TestNewServerValidation(t *testing.T) {
	reg := prometheus.NewRegistry()
	for name, fn := range map[string]func() (*Server, error){
		"empty addr": func() (*Server, error) { return NewServer("", reg, NewHealth(), nil) },
		"nil reg":    func() (*Server, error) { return NewServer(":0", nil, NewHealth(), nil) },
		"nil health": func() (*Server, error) { return NewServer(":0", reg, nil, nil) },
	} {
		if _, err := fn(); !errors.Is(err, ErrOption) {
			t.Errorf("%s: err = %v, want ErrOption", name, err)
		}
	}
}
