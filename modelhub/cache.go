package modelhub

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// The files a pull fetches.
const (
	fileConfig      = "config.json"
	fileSafetensors = "model.safetensors"
	fileBin         = "pytorch_model.bin"
)

var (
	// weightFiles in order of preference: the first the repository has is fetched.
	weightFiles = []string{fileSafetensors, fileBin}
	// optionalFiles are fetched when the repository has them (a few hundred bytes each); a
	// snapshot without them is still complete.
	optionalFiles = []string{"special_tokens_map.json", "vocab.txt"}
)

// Snapshot is one revision of a repository in the cache.
type Snapshot struct {
	Repo     string   // "org/name"
	Revision string   // as asked for: branch, tag or commit
	Commit   string   // the commit sha the revision is at
	Dir      string   // {cache}/models--{org}--{name}/snapshots/{commit}
	Files    []string // file names in Dir: config.json, the optional files present, the weights
	Weights  string   // the weights file in Dir: model.safetensors or pytorch_model.bin
	Size     int64    // bytes of Files together
}

// Path is the path of file name in the snapshot.
func (s Snapshot) Path(name string) string { return filepath.Join(s.Dir, name) }

// CachedModel is one snapshot in the cache, as List reports it.
type CachedModel struct {
	Repo      string   // "org/name"
	Commit    string   // the snapshot's commit
	Revisions []string // the refs (branches, tags) at this commit, sorted; none if pulled by sha
	Dir       string   // the snapshot directory
	Files     []string // file names in Dir, sorted
	Size      int64    // bytes of Files together
	Complete  bool     // config.json and a weights file are there: Resolve can use it
}

func repoFolder(repo string) string { return "models--" + strings.ReplaceAll(repo, "/", "--") }

func (c *Client) repoDir(repo string) string { return filepath.Join(c.cacheDir, repoFolder(repo)) }

func (c *Client) lockDir(repo string) string {
	return filepath.Join(c.cacheDir, ".locks", repoFolder(repo))
}

func (c *Client) blobPath(repo, id string) string {
	return filepath.Join(c.repoDir(repo), "blobs", id)
}

func (c *Client) snapshotDir(repo, commit string) string {
	return filepath.Join(c.repoDir(repo), "snapshots", commit)
}

// isFile reports whether path is (or links to) a regular file, and its size.
func isFile(path string) (int64, bool) {
	fi, err := os.Stat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return 0, false
	}
	return fi.Size(), true
}

// cachedSnapshot is the snapshot of commit, if the cache has config.json and a weights file for
// it.
func (c *Client) cachedSnapshot(r Ref, commit string) (Snapshot, bool) {
	dir := c.snapshotDir(r.Repo, commit)
	size, ok := isFile(filepath.Join(dir, fileConfig))
	if !ok {
		return Snapshot{}, false
	}
	s := Snapshot{Repo: r.Repo, Revision: r.Revision, Commit: commit, Dir: dir, Files: []string{fileConfig}, Size: size}
	for _, name := range optionalFiles {
		if n, ok := isFile(filepath.Join(dir, name)); ok {
			s.Files, s.Size = append(s.Files, name), s.Size+n
		}
	}
	for _, name := range weightFiles {
		if n, ok := isFile(filepath.Join(dir, name)); ok {
			s.Files, s.Size, s.Weights = append(s.Files, name), s.Size+n, name
			return s, true
		}
	}
	return Snapshot{}, false
}

// readRef is the commit the cache has for r's revision: the revision itself if it is a commit
// sha, else the content of refs/{revision}.
func (c *Client) readRef(r Ref) (string, bool) {
	if isCommit(r.Revision) {
		return r.Revision, true
	}
	b, err := os.ReadFile(filepath.Join(c.repoDir(r.Repo), "refs", filepath.FromSlash(r.Revision)))
	if err != nil {
		return "", false
	}
	commit := strings.TrimSpace(string(b))
	return commit, isCommit(commit)
}

// fromCache is r's snapshot from the cache alone, or ErrNotCached.
func (c *Client) fromCache(r Ref) (Snapshot, error) {
	w := where{repo: r.Repo, rev: r.Revision}
	commit, ok := c.readRef(r)
	if !ok {
		return Snapshot{}, w.errorf(ErrNotCached, "no refs/%s in %s: run `seqembed model pull %s` while online", r.Revision, c.repoDir(r.Repo), r)
	}
	s, ok := c.cachedSnapshot(r, commit)
	if !ok {
		return Snapshot{}, w.errorf(ErrNotCached, "snapshot %s lacks config.json or the weights: run `seqembed model pull %s` while online", c.snapshotDir(r.Repo, commit), r)
	}
	return s, nil
}

// writeRef records that r's revision is at commit (refs/{revision}); nothing for a commit sha.
func (c *Client) writeRef(r Ref, commit string) error {
	if r.Revision == commit {
		return nil
	}
	path := filepath.Join(c.repoDir(r.Repo), "refs", filepath.FromSlash(r.Revision))
	if b, err := os.ReadFile(path); err == nil && string(b) == commit {
		return nil
	}
	if err := writeFileAtomic(path, []byte(commit)); err != nil {
		return where{repo: r.Repo, rev: r.Revision}.errorf(ErrCache, "writing the ref: %w", err)
	}
	return nil
}

// writeFileAtomic writes data to path through a temporary file and a rename, creating the
// directories on the way.
func writeFileAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		_ = os.Remove(f.Name())
		return err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		_ = os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		_ = os.Remove(f.Name())
		return err
	}
	return nil
}

// linkFile makes dst (snapshots/{commit}/{file}) point at blob: a relative symlink as
// huggingface_hub makes, else (a file system without symlinks) a hard link, else a copy. The
// link is made under a temporary name and renamed into place.
func linkFile(blob, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	rel, err := filepath.Rel(filepath.Dir(dst), blob)
	if err != nil {
		rel = blob
	}
	if target, err := os.Readlink(dst); err == nil && target == rel {
		return nil
	}
	// A name of its own: two pulls of one snapshot may link the same file at once.
	tmp := fmt.Sprintf("%s.tmp-%d-%d", dst, os.Getpid(), rand.Uint64())
	if err := os.Symlink(rel, tmp); err != nil {
		if err := os.Link(blob, tmp); err != nil {
			if err := copyFile(blob, tmp); err != nil {
				return err
			}
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, cerr := io.Copy(out, in)
	if err := errors.Join(cerr, out.Close()); err != nil {
		_ = os.Remove(dst)
		return err
	}
	return nil
}

// List reports every snapshot in the cache, sorted by repository and commit. A missing cache
// directory is an empty list.
func (c *Client) List(ctx context.Context) ([]CachedModel, error) {
	entries, err := os.ReadDir(c.cacheDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("modelhub: %w: listing %s: %w", ErrCache, c.cacheDir, err)
	}
	var out []CachedModel
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("modelhub: listing %s: %w", c.cacheDir, err)
		}
		org, name, ok := strings.Cut(strings.TrimPrefix(e.Name(), "models--"), "--")
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "models--") || !ok {
			continue
		}
		repo := org + "/" + name
		if validRepo(repo) != nil {
			continue
		}
		models, err := c.listRepo(repo)
		if err != nil {
			return nil, err
		}
		out = append(out, models...)
	}
	return out, nil
}

// listRepo is List for one repository.
func (c *Client) listRepo(repo string) ([]CachedModel, error) {
	dir := c.repoDir(repo)
	refs := map[string][]string{} // commit -> revisions
	refsDir := filepath.Join(dir, "refs")
	err := filepath.WalkDir(refsDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(refsDir, path)
		if err != nil {
			return err
		}
		commit := strings.TrimSpace(string(b))
		refs[commit] = append(refs[commit], filepath.ToSlash(rel))
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("modelhub: %s: %w: reading refs: %w", repo, ErrCache, err)
	}
	snaps, err := os.ReadDir(filepath.Join(dir, "snapshots"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("modelhub: %s: %w: reading snapshots: %w", repo, ErrCache, err)
	}
	var out []CachedModel
	for _, s := range snaps {
		if !s.IsDir() {
			continue
		}
		m := CachedModel{Repo: repo, Commit: s.Name(), Dir: filepath.Join(dir, "snapshots", s.Name())}
		files, err := os.ReadDir(m.Dir)
		if err != nil {
			return nil, fmt.Errorf("modelhub: %s: %w: reading snapshot %s: %w", repo, ErrCache, s.Name(), err)
		}
		for _, f := range files {
			if n, ok := isFile(filepath.Join(m.Dir, f.Name())); ok {
				m.Files, m.Size = append(m.Files, f.Name()), m.Size+n
			}
		}
		m.Revisions = refs[m.Commit]
		slices.Sort(m.Revisions)
		_, m.Complete = c.cachedSnapshot(Ref{Repo: repo, Revision: m.Commit}, m.Commit)
		out = append(out, m)
	}
	return out, nil
}
