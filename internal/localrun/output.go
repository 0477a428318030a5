package localrun

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/seqembed/seqembed/arrowout"
)

var (
	// ErrOutputFormat: the output's format is unknown: a --format other than parquet or arrow,
	// or, without --format, a suffix that names neither. A usage error.
	ErrOutputFormat = errors.New("output format")
	// ErrOutputPath: the output path cannot be written: it exists (without --force), is a
	// directory or not a regular file, or its directory is missing or not writable.
	ErrOutputPath = errors.New("output file")
)

// Output file suffixes CheckOutput accepts without --format.
var (
	parquetSuffixes = []string{".parquet", ".pq", ".parq"}
	arrowSuffixes   = []string{".arrow", ".arrows", ".feather", ".ipc"}
)

// CheckOutput checks the output file of `run` and `sink` before any work and returns its format
// (arrowout.FormatParquet or FormatArrow). format is --format: parquet or arrow, or "" to go by
// path's suffix (.parquet, .pq, .parq; .arrow, .arrows, .feather, .ipc): any other suffix, such
// as .csv or .npy, is ErrOutputFormat. The path must not exist unless force (and even then it
// must be a regular file), and its directory must exist and take a new file (the sinks write a
// temporary file there and rename it into place); these fail with ErrOutputPath.
func CheckOutput(path, format string, force bool) (string, error) {
	if path == "" {
		return "", fmt.Errorf("%w: no output file named (--out)", ErrOutputFormat)
	}
	fi, statErr := os.Stat(path)
	if statErr == nil && fi.IsDir() { // before the suffix: "is a directory" is the news
		return "", fmt.Errorf("%w: %s is a directory", ErrOutputPath, path)
	}
	f, err := outputFormat(path, format)
	if err != nil {
		return "", err
	}
	switch err := statErr; {
	case err == nil && !fi.Mode().IsRegular():
		return "", fmt.Errorf("%w: %s exists and is not a regular file", ErrOutputPath, path)
	case err == nil && !force:
		return "", fmt.Errorf("%w: %s exists; pass --force to replace it", ErrOutputPath, path)
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("%w: %w", ErrOutputPath, err)
	}
	dir := filepath.Dir(path)
	fi, err = os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("%w: %s: the directory %s does not exist", ErrOutputPath, path, dir)
	case err != nil:
		return "", fmt.Errorf("%w: %s: %w", ErrOutputPath, path, err)
	case !fi.IsDir():
		return "", fmt.Errorf("%w: %s: %s is not a directory", ErrOutputPath, path, dir)
	}
	probe, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.check")
	if err != nil {
		return "", fmt.Errorf("%w: %s: cannot create files in %s: %w", ErrOutputPath, path, dir, err)
	}
	probe.Close()
	if err := os.Remove(probe.Name()); err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrOutputPath, path, err)
	}
	return f, nil
}

// outputFormat resolves --format (or, when empty, path's suffix) to a format.
func outputFormat(path, format string) (string, error) {
	switch f := strings.ToLower(format); f {
	case arrowout.FormatParquet, arrowout.FormatArrow:
		return f, nil
	case "":
	default:
		return "", fmt.Errorf("%w: --format %q: want %s or %s", ErrOutputFormat, format, arrowout.FormatParquet, arrowout.FormatArrow)
	}
	ext := strings.ToLower(filepath.Ext(path))
	for _, s := range parquetSuffixes {
		if ext == s {
			return arrowout.FormatParquet, nil
		}
	}
	for _, s := range arrowSuffixes {
		if ext == s {
			return arrowout.FormatArrow, nil
		}
	}
	what := "no suffix"
	if ext != "" {
		what = "the suffix " + ext
	}
	return "", fmt.Errorf("%w: %s has %s: name it %s (Parquet) or %s (Arrow IPC file), or pass --format parquet|arrow",
		ErrOutputFormat, path, what, strings.Join(parquetSuffixes, ", "), strings.Join(arrowSuffixes, ", "))
}
