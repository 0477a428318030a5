package localrun

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/seqembed/seqembed/arrowout"
)

var (
	// ErrOutputFormat: the output's format is unknown: a --format other than parquet or arrow,
	// or, without --format, a suffix that names neither (arrowout.FileFormat, whose error this
	// is). A usage error.
	ErrOutputFormat = arrowout.ErrFormat
	// ErrOutputPath: the output path cannot be written: it exists (without --force), is a
	// directory or not a regular file, or its directory is missing or not writable.
	ErrOutputPath = errors.New("output file")
)

// CheckOutput checks the output file of `run` and `sink` before any work and returns its format
// (arrowout.FormatParquet or FormatArrow). format is --format: parquet or arrow, or "" to go by
// path's suffix (arrowout.FileFormat: .parquet, .pq, .parq; .arrow, .arrows, .feather, .ipc): any
// other suffix, such as .csv or .npy, is ErrOutputFormat. The path must not exist unless force
// (and even then it must be a regular file), and its directory must exist and take a new file
// (the sinks write a temporary file there and rename it into place); these fail with
// ErrOutputPath.
func CheckOutput(path, format string, force bool) (string, error) {
	if path == "" {
		return "", fmt.Errorf("%w: no output file named (--out)", ErrOutputFormat)
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() { // before the suffix: "is a directory" is the news
		return "", fmt.Errorf("%w: %s is a directory", ErrOutputPath, path)
	}
	f, err := arrowout.FileFormat(format, path)
	if err != nil {
		return "", err
	}
	if err := checkPath(path, force); err != nil {
		return "", err
	}
	return f, nil
}

// ConflictsPath is where `run` and `sink` write the id conflicts of the output file out unless
// told otherwise (--conflicts): out + ".conflicts.tsv".
func ConflictsPath(out string) string { return out + ".conflicts.tsv" }

// CheckConflicts checks the conflicts file path of the output out before any work, as
// CheckOutput checks the output (no existing file without force, a directory that takes new
// files; errors wrap ErrOutputPath); it must not be the output itself.
func CheckConflicts(path, out string, force bool) error {
	if filepath.Clean(path) == filepath.Clean(out) {
		return fmt.Errorf("%w: the conflicts file %s is the output file", ErrOutputPath, path)
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return fmt.Errorf("%w: the conflicts file %s is a directory", ErrOutputPath, path)
	}
	return checkPath(path, force)
}

// checkPath checks that a new file can be written at path: none there unless force (and then a
// regular file), a directory that exists and takes new files. Errors wrap ErrOutputPath.
func checkPath(path string, force bool) error {
	fi, statErr := os.Stat(path)
	switch err := statErr; {
	case err == nil && !fi.Mode().IsRegular():
		return fmt.Errorf("%w: %s exists and is not a regular file", ErrOutputPath, path)
	case err == nil && !force:
		return fmt.Errorf("%w: %s exists; pass --force to replace it", ErrOutputPath, path)
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%w: %w", ErrOutputPath, err)
	}
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%w: %s: the directory %s does not exist", ErrOutputPath, path, dir)
	case err != nil:
		return fmt.Errorf("%w: %s: %w", ErrOutputPath, path, err)
	case !fi.IsDir():
		return fmt.Errorf("%w: %s: %s is not a directory", ErrOutputPath, path, dir)
	}
	probe, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.check")
	if err != nil {
		return fmt.Errorf("%w: %s: cannot create files in %s: %w", ErrOutputPath, path, dir, err)
	}
	probe.Close()
	if err := os.Remove(probe.Name()); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrOutputPath, path, err)
	}
	return nil
}
