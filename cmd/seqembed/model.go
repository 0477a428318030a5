package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/seqembed/seqembed/internal/cli"
	"github.com/seqembed/seqembed/modelhub"
)

const modelSynopsis = `usage: seqembed model pull [--revision R] [--cache DIR] NAME
       seqembed model build --from CHECKPOINT --out DIR [flags]   (seqembed model build -h)
       seqembed model list [--cache DIR]

pull downloads an ESM-2 checkpoint (config.json and model.safetensors, else pytorch_model.bin)
from the Hugging Face hub into the local cache and prints its snapshot directory on stdout.
NAME is org/name[@REVISION], e.g. facebook/esm2_t33_650M_UR50D (an hf: prefix is allowed);
REVISION is a branch, tag or commit sha (default main). A pull of a revision already in the cache
downloads nothing; an interrupted one resumes. list prints what the cache holds.

Environment: HF_ENDPOINT (default https://huggingface.co), HF_TOKEN (for private or gated
repositories; never printed), HF_HUB_OFFLINE=1 (use the cache only), SEQEMBED_CACHE (the cache
directory, as --cache). Exit codes: 0 done, 1 failed, 2 usage error.`

// runModelCmd is `seqembed model pull|list`.
func runModelCmd(ctx context.Context, args []string) error {
	return modelCmd(ctx, args, os.Stdout, os.Stderr)
}

// modelCmd runs `seqembed model` with its output on stdout (the snapshot directory, the list)
// and progress and logs on stderr.
func modelCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return cli.Usagef("missing subcommand: seqembed model pull NAME, seqembed model build --from CHECKPOINT --out DIR, or seqembed model list")
	}
	switch args[0] {
	case "pull":
		return modelPull(ctx, args[1:], stdout, stderr)
	case "list":
		return modelList(ctx, args[1:], stdout, stderr)
	case "build":
		return modelBuild(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(stderr, modelSynopsis)
		return flag.ErrHelp
	}
	return cli.Usagef("unknown subcommand %q: seqembed model takes pull, build or list", args[0])
}

// modelClient is the hub client of the flags: cache (empty: the default), progress on stderr
// unless quiet. A bad setting (a flag or HF_ENDPOINT) is a usage error.
func modelClient(cache string, stderr io.Writer, quiet bool) (*modelhub.Client, error) {
	var opts []modelhub.Option
	if cache != "" {
		opts = append(opts, modelhub.WithCacheDir(cache))
	}
	if !quiet {
		opts = append(opts, modelhub.WithProgress(stderr))
	}
	c, err := modelhub.New(opts...)
	if errors.Is(err, modelhub.ErrOption) {
		return nil, &cli.UsageError{Err: err}
	}
	return c, err
}

func modelPull(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("model pull", flag.ContinueOnError)
	revision := fs.String("revision", "", "branch, tag or commit sha to pull (default: NAME's @REVISION, else main)")
	cache := fs.String("cache", "", "cache directory (default: $SEQEMBED_CACHE, else seqembed/hub in the user cache directory)")
	quiet := fs.Bool("quiet", false, "print no progress or log lines on stderr")
	setUsage(fs, modelSynopsis)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	switch {
	case len(pos) == 0:
		return cli.Usagef("missing NAME: seqembed model pull org/name[@REVISION]")
	case len(pos) > 1:
		return cli.Usagef("unexpected argument %q: seqembed model pull takes one NAME", pos[1])
	}
	ref, err := modelhub.ParseRef(pos[0])
	if err != nil {
		return &cli.UsageError{Err: err}
	}
	if *revision != "" {
		if strings.Contains(pos[0], "@") && ref.Revision != *revision {
			return cli.Usagef("%s pins revision %s but --revision is %s: give one", pos[0], ref.Revision, *revision)
		}
		if ref, err = modelhub.ParseRef(ref.Repo + "@" + *revision); err != nil {
			return &cli.UsageError{Err: err}
		}
	}
	c, err := modelClient(*cache, stderr, *quiet)
	if err != nil {
		return err
	}
	s, err := c.Pull(ctx, ref.String())
	if err != nil {
		return err
	}
	if !*quiet {
		fmt.Fprintf(stderr, "model: %s is commit %s: %s (%s)\n", ref, s.Commit, strings.Join(s.Files, ", "), bytesString(uint64(s.Size)))
	}
	_, err = fmt.Fprintln(stdout, s.Dir)
	return err
}

func modelList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("model list", flag.ContinueOnError)
	cache := fs.String("cache", "", "cache directory (default: $SEQEMBED_CACHE, else seqembed/hub in the user cache directory)")
	setUsage(fs, modelSynopsis)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	c, err := modelClient(*cache, stderr, true)
	if err != nil {
		return err
	}
	models, err := c.List(ctx)
	if err != nil {
		return err
	}
	if len(models) == 0 {
		fmt.Fprintf(stderr, "model: no models in %s\n", c.CacheDir())
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REPO\tREVISION\tCOMMIT\tSIZE\tFILES")
	for _, m := range models {
		revs := strings.Join(m.Revisions, ",")
		if revs == "" {
			revs = "-"
		}
		size := bytesString(uint64(m.Size))
		if !m.Complete {
			size += " (incomplete)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.Repo, revs, m.Commit, size, strings.Join(m.Files, ","))
	}
	return tw.Flush()
}
