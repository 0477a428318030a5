package modelhub

import (
	"fmt"
	"regexp"
	"strings"
)

// DefaultRevision is the revision a reference without one pins.
const DefaultRevision = "main"

// Scheme is the prefix that marks a model reference as a hub one ("hf:org/name").
const Scheme = "hf:"

// Ref is a model on the hub: a repository and a revision (branch, tag or commit sha).
type Ref struct {
	Repo     string // "org/name", e.g. "facebook/esm2_t6_8M_UR50D"
	Revision string // branch, tag or 40-hex commit sha; DefaultRevision if none was given
}

// String is the reference as ParseRef reads it: "hf:org/name@revision".
func (r Ref) String() string { return Scheme + r.Repo + "@" + r.Revision }

var (
	// repoPart is one half of "org/name", by the hub's rules: letters, digits, '.', '_', '-',
	// neither starting nor ending with '.' or '-' (checked with "--" and ".." in validRepo).
	repoPart = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$`)
	// revisionChars are those of branch and tag names that are safe in a URL path segment
	// (escaped) and as a path under refs/.
	revisionChars = regexp.MustCompile(`^[A-Za-z0-9._+/-]+$`)
	commitSHA     = regexp.MustCompile(`^[0-9a-f]{40}$`)
)

// ParseRef reads "[hf:]org/name[@revision]", e.g. "hf:facebook/esm2_t33_650M_UR50D@main" or
// "facebook/esm2_t6_8M_UR50D"; the revision defaults to DefaultRevision. An invalid reference
// is ErrBadRef.
func ParseRef(s string) (Ref, error) {
	name := strings.TrimPrefix(strings.TrimSpace(s), Scheme)
	repo, rev, hasRev := strings.Cut(name, "@")
	if !hasRev {
		rev = DefaultRevision
	}
	r := Ref{Repo: repo, Revision: rev}
	if err := validRepo(repo); err != nil {
		return Ref{}, fmt.Errorf("modelhub: %w %q: %w", ErrBadRef, s, err)
	}
	if err := validRevision(rev); err != nil {
		return Ref{}, fmt.Errorf("modelhub: %w %q: %w", ErrBadRef, s, err)
	}
	return r, nil
}

func validRepo(repo string) error {
	org, name, ok := strings.Cut(repo, "/")
	switch {
	case repo == "":
		return fmt.Errorf("no repository: want org/name, e.g. facebook/esm2_t6_8M_UR50D")
	case !ok || strings.Contains(name, "/"):
		return fmt.Errorf("repository %q is not org/name", repo)
	case len(org) > 96 || len(name) > 96:
		return fmt.Errorf("repository %q: org and name are at most 96 characters each", repo)
	case !repoPart.MatchString(org) || !repoPart.MatchString(name) || strings.Contains(repo, "--") || strings.Contains(repo, ".."):
		return fmt.Errorf("repository %q: org and name are letters, digits, '.', '_' and '-' (not at either end, no \"--\" or \"..\")", repo)
	}
	return nil
}

func validRevision(rev string) error {
	switch {
	case rev == "":
		return fmt.Errorf("empty revision after '@'")
	case len(rev) > 255:
		return fmt.Errorf("revision longer than 255 characters")
	case !revisionChars.MatchString(rev):
		return fmt.Errorf("revision %q: letters, digits and '.', '_', '+', '-', '/' only", rev)
	}
	for _, seg := range strings.Split(rev, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("revision %q: empty, '.' or '..' path segment", rev)
		}
	}
	return nil
}

// isCommit reports whether rev is a full commit sha (which names a snapshot directly).
func isCommit(rev string) bool { return commitSHA.MatchString(rev) }
