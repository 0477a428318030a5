package telemetry

import (
	"fmt"
	"io"
	"os"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Log levels accepted by NewLogger.
const (
	LevelDebug = "debug"
	LevelInfo  = "info" // default
	LevelWarn  = "warn"
	LevelError = "error"
)

// Log formats accepted by NewLogger.
const (
	FormatJSON    = "json" // default
	FormatConsole = "console"
)

// NewLogger builds the worker's structured logger, writing to stderr.
//
// level is one of debug, info, warn or error (case-insensitive; "" means
// info). format is json (one object per line, for log shippers) or console
// (tab-separated, for humans); "" means json. Any other value returns an
// error wrapping ErrOption.
//
// The logger uses ISO-8601 timestamps under "ts", records the caller, adds a
// stack trace to error-level entries and does not sample: per-record events
// are counted by Metrics, so logs at info and above stay low-volume. The
// caller owns the logger and should Sync it before exit.
func NewLogger(level string, format string) (*zap.Logger, error) {
	return newLogger(level, format, os.Stderr)
}

// newLogger is NewLogger with an injectable destination, for tests.
func newLogger(level, format string, w io.Writer) (*zap.Logger, error) {
	lvl, err := parseLevel(level)
	if err != nil {
		return nil, err
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	switch strings.ToLower(strings.TrimSpace(format)) {
	case "", FormatJSON:
		enc = zapcore.NewJSONEncoder(encCfg)
	case FormatConsole:
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	default:
		return nil, fmt.Errorf("%w: log format %q (want %s or %s)", ErrOption, format, FormatJSON, FormatConsole)
	}
	sink := zapcore.Lock(zapcore.AddSync(w))
	core := zapcore.NewCore(enc, sink, lvl)
	return zap.New(core, zap.AddCaller(), zap.AddStacktrace(zapcore.ErrorLevel), zap.ErrorOutput(sink)), nil
}

func parseLevel(level string) (zapcore.Level, error) {
	switch strings.ToLower(strings.TrimSpace(level)) {
	case LevelDebug:
		return zapcore.DebugLevel, nil
	case "", LevelInfo:
		return zapcore.InfoLevel, nil
	case LevelWarn:
		return zapcore.WarnLevel, nil
	case LevelError:
		return zapcore.ErrorLevel, nil
	default:
		return zapcore.InfoLevel, fmt.Errorf("%w: log level %q (want %s, %s, %s or %s)",
			ErrOption, level, LevelDebug, LevelInfo, LevelWarn, LevelError)
	}
}
