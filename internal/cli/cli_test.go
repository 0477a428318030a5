package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"syscall"
	"testing"
)

// TestCode maps each kind of command error to its exit code.
func TestCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, ExitOK},
		{flag.ErrHelp, ExitOK},
		{Usagef("--out is required"), ExitUsage},
		{fmt.Errorf("run: %w", &UsageError{Err: errors.New("bad")}), ExitUsage},
		{fmt.Errorf("%w: 3 of 10 records dead-lettered", ErrRejected), ExitRejected},
		{fmt.Errorf("%w: 2 ids", ErrIDConflicts), ExitRejected},
		{errors.Join(fmt.Errorf("%w: 1", ErrRejected), fmt.Errorf("%w: 2", ErrIDConflicts)), ExitRejected},
		{errors.New("model did not load"), ExitFailed},
	} {
		if got := Code(tc.err); got != tc.want {
			t.Errorf("Code(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	inner := errors.New("inner")
	if err := Usagef("x: %w", inner); !errors.Is(err, inner) || err.Error() != "x: inner" {
		t.Errorf("Usagef does not wrap: %v", err)
	}
}

// TestMainExitCodes runs a Program whose commands return each kind of error.
func TestMainExitCodes(t *testing.T) {
	ret := func(err error) func(context.Context, []string) error {
		return func(context.Context, []string) error { return err }
	}
	p := Program{Name: "prog", Commands: []Command{
		{Name: "ok", Run: ret(nil)},
		{Name: "helpflag", Run: ret(flag.ErrHelp)},
		{Name: "usage", Run: ret(Usagef("no file"))},
		{Name: "rejects", Run: ret(fmt.Errorf("%w: 1 record", ErrRejected))},
		{Name: "fail", Run: ret(errors.New("boom"))},
	}}
	for args, want := range map[string]int{"ok": 0, "helpflag": 0, "usage": 2, "rejects": 3, "fail": 1, "nosuch": 2, "": 2} {
		var argv []string
		if args != "" {
			argv = []string{args}
		}
		if got := p.Main(argv); got != want {
			t.Errorf("Main(%q) = %d, want %d", args, got, want)
		}
	}
}

// TestMainInterrupted: a command that fails because SIGTERM cancelled its context exits 130 and
// says it was interrupted; one that finishes cleanly on the signal exits 0.
func TestMainInterrupted(t *testing.T) {
	for _, tc := range []struct {
		name string
		ret  func(ctx context.Context) error
		want int
	}{
		{"cut-short", func(ctx context.Context) error { return fmt.Errorf("publishing: %w", ctx.Err()) }, ExitInterrupted},
		{"drains", func(context.Context) error { return nil }, ExitOK},
	} {
		ready := make(chan struct{})
		p := Program{Name: "prog", Commands: []Command{{Name: "cmd", Run: func(ctx context.Context, _ []string) error {
			close(ready)
			<-ctx.Done()
			return tc.ret(ctx)
		}}}}
		go func() {
			<-ready // Main's signal.NotifyContext is in place: the signal cancels, it does not kill
			_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
		}()
		if got := p.Main([]string{"cmd"}); got != tc.want {
			t.Errorf("%s: Main = %d, want %d", tc.name, got, tc.want)
		}
	}
}
