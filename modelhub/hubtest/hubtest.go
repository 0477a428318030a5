// Package hubtest is a fake Hugging Face hub for tests: two local HTTP servers, the hub and its
// "CDN", serving repositories in the hub's layout.
//
// The hub answers GET /api/models/{org}/{name}/revision/{rev} (the listing: sha, siblings) and
// HEAD and GET /{org}/{name}/resolve/{rev}/{file}: a plain file with X-Repo-Commit, ETag (its git
// blob sha1) and Content-Length; an LFS file with a 302 to the CDN, X-Repo-Commit, X-Linked-Etag
// (its sha256) and X-Linked-Size. Both servers honour "Range: bytes=N-". A private repository
// answers 401 without its token. Faults (Drop, IgnoreRange, Stall) apply to the next GETs of a
// file's bytes, in the order they were added. Every request is recorded, and so are the body
// bytes sent per file (counted before they are written, so a client that has read them sees the
// count).
package hubtest

import (
	"crypto/sha1" //nolint:gosec // git's blob id
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// File is a file of a fake repository.
type File struct {
	Name string
	Data []byte
	LFS  bool // stored in LFS: served by the CDN, identified by its sha256
	// WrongID makes the hub advertise an identity (sha256 or git sha1) the bytes do not have.
	WrongID bool
}

// Repo is a fake repository at one commit.
type Repo struct {
	ID    string // "org/name"
	Files []File
	Token string   // non-empty: a private repository that needs "Authorization: Bearer Token"
	Tags  []string // revisions that name the commit besides "main" and the sha itself
	// RedirectOnGETOnly makes a HEAD of an LFS file answer 200 with the LFS headers and no
	// Location, so that only the GET redirects to the CDN (as a mirror may).
	RedirectOnGETOnly bool
	// NoListing makes the revision listing answer a bare 404 (an endpoint without the API).
	NoListing bool
}

// Request is one request a server received.
type Request struct {
	Server        string // "hub" or "cdn"
	Method, Path  string
	Range         string // the Range header
	Authorization string // the Authorization header
}

type faultKind int

const (
	drop faultKind = iota + 1
	ignoreRange
	stall
)

type fault struct {
	kind    faultKind
	after   int64
	reached chan struct{}
}

type repo struct {
	Repo
	commit string
	files  map[string]File
}

// Hub is the fake hub. Its methods are safe for concurrent use.
type Hub struct {
	URL    string // the hub's endpoint (HF_ENDPOINT)
	CDNURL string // the CDN's base URL

	mu     sync.Mutex
	repos  map[string]*repo
	reqs   []Request
	served map[string]int64
	faults map[string][]*fault
}

// New starts a hub serving repos; both servers close when the test ends.
func New(t testing.TB, repos ...Repo) *Hub {
	t.Helper()
	h := &Hub{repos: map[string]*repo{}, served: map[string]int64{}, faults: map[string][]*fault{}}
	for _, r := range repos {
		sum := sha1.Sum([]byte("commit " + r.ID)) //nolint:gosec // a fake commit id
		rr := &repo{Repo: r, commit: hex.EncodeToString(sum[:]), files: map[string]File{}}
		for _, f := range r.Files {
			rr.files[f.Name] = f
		}
		h.repos[r.ID] = rr
	}
	// The URLs are set before either server serves: the handlers read them, and a request may
	// come from another process (no happens-before the race detector could see).
	cdn := httptest.NewUnstartedServer(http.HandlerFunc(h.serveCDN))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/models/{org}/{name}/revision/{rev}", h.serveListing)
	mux.HandleFunc("/{org}/{name}/resolve/{rev}/{file}", h.serveResolve)
	hub := httptest.NewUnstartedServer(h.record("hub", mux))
	h.URL, h.CDNURL = "http://"+hub.Listener.Addr().String(), "http://"+cdn.Listener.Addr().String()
	cdn.Start()
	t.Cleanup(cdn.Close)
	hub.Start()
	t.Cleanup(hub.Close)
	return h
}

// Commit is the commit sha of repository id.
func (h *Hub) Commit(id string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if r := h.repos[id]; r != nil {
		return r.commit
	}
	return ""
}

// Requests returns the requests received so far, in order.
func (h *Hub) Requests() []Request {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Request(nil), h.reqs...)
}

// Count is the number of requests server ("hub", "cdn" or "" for both) got with method.
func (h *Hub) Count(server, method string) int {
	n := 0
	for _, r := range h.Requests() {
		if (server == "" || r.Server == server) && r.Method == method {
			n++
		}
	}
	return n
}

// Served is the number of body bytes sent of the file named name (any repository).
func (h *Hub) Served(name string) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.served[name]
}

// Reset forgets the requests and byte counts recorded so far (faults stay).
func (h *Hub) Reset() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reqs, h.served = nil, map[string]int64{}
}

// Drop makes a coming GET of name's bytes send the headers (the full Content-Length) and the
// first after bytes, then close the connection.
func (h *Hub) Drop(name string, after int64) { h.addFault(name, &fault{kind: drop, after: after}) }

// IgnoreRange makes a coming GET of name's bytes answer 200 with the whole file, whatever its
// Range.
func (h *Hub) IgnoreRange(name string) { h.addFault(name, &fault{kind: ignoreRange}) }

// Stall makes a coming GET of name's bytes send the first after bytes and then nothing until the
// client goes away; the channel returned is closed once those bytes are written.
func (h *Hub) Stall(name string, after int64) <-chan struct{} {
	f := &fault{kind: stall, after: after, reached: make(chan struct{})}
	h.addFault(name, f)
	return f.reached
}

func (h *Hub) addFault(name string, f *fault) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.faults[name] = append(h.faults[name], f)
}

func (h *Hub) nextFault(name string) *fault {
	h.mu.Lock()
	defer h.mu.Unlock()
	q := h.faults[name]
	if len(q) == 0 {
		return nil
	}
	h.faults[name] = q[1:]
	return q[0]
}

func (h *Hub) addServed(name string, n int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.served[name] += n
}

func (h *Hub) record(server string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.reqs = append(h.reqs, Request{Server: server, Method: r.Method, Path: r.URL.Path,
			Range: r.Header.Get("Range"), Authorization: r.Header.Get("Authorization")})
		h.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

// lookup finds the repository and commit of a request, or answers the error itself.
func (h *Hub) lookup(w http.ResponseWriter, r *http.Request) (*repo, bool) {
	h.mu.Lock()
	rr := h.repos[r.PathValue("org")+"/"+r.PathValue("name")]
	h.mu.Unlock()
	switch {
	case rr == nil:
		hubError(w, http.StatusNotFound, "RepoNotFound", "Repository not found")
		return nil, false
	case rr.Token != "" && r.Header.Get("Authorization") != "Bearer "+rr.Token:
		msg := "Access to model " + rr.ID + " is restricted. You must have access to it and be authenticated to access it."
		if r.Header.Get("Authorization") != "" {
			msg = "Invalid credentials in Authorization header"
		}
		hubError(w, http.StatusUnauthorized, "", msg)
		return nil, false
	}
	rev := r.PathValue("rev")
	if rev != "main" && rev != rr.commit && !contains(rr.Tags, rev) {
		hubError(w, http.StatusNotFound, "RevisionNotFound", "Invalid rev id: "+rev)
		return nil, false
	}
	return rr, true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func hubError(w http.ResponseWriter, code int, errCode, msg string) {
	if errCode != "" {
		w.Header().Set("X-Error-Code", errCode)
	}
	w.Header().Set("X-Error-Message", msg)
	http.Error(w, msg, code)
}

func (h *Hub) serveListing(w http.ResponseWriter, r *http.Request) {
	rr, ok := h.lookup(w, r)
	if !ok {
		return
	}
	if rr.NoListing {
		http.NotFound(w, r)
		return
	}
	type sibling struct {
		RFilename string `json:"rfilename"`
	}
	out := struct {
		ID       string    `json:"id"`
		SHA      string    `json:"sha"`
		Private  bool      `json:"private"`
		Siblings []sibling `json:"siblings"`
	}{ID: rr.ID, SHA: rr.commit, Private: rr.Token != ""}
	for _, f := range rr.Files {
		out.Siblings = append(out.Siblings, sibling{RFilename: f.Name})
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// ID is the identity the hub gives f: its sha256 if it is in LFS, else its git blob sha1.
func ID(f File) string {
	var sum []byte
	if f.LFS {
		s := sha256.Sum256(f.Data)
		sum = s[:]
	} else {
		hh := sha1.New() //nolint:gosec // git's blob id
		fmt.Fprintf(hh, "blob %d\x00", len(f.Data))
		hh.Write(f.Data)
		sum = hh.Sum(nil)
	}
	if f.WrongID {
		sum[0] ^= 0xff
	}
	return hex.EncodeToString(sum)
}

func (h *Hub) serveResolve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	rr, ok := h.lookup(w, r)
	if !ok {
		return
	}
	w.Header().Set("X-Repo-Commit", rr.commit)
	f, ok := rr.files[r.PathValue("file")]
	if !ok {
		hubError(w, http.StatusNotFound, "EntryNotFound", "Entry not found")
		return
	}
	if f.LFS {
		w.Header().Set("X-Linked-Etag", `"`+ID(f)+`"`)
		w.Header().Set("X-Linked-Size", strconv.Itoa(len(f.Data)))
		w.Header().Set("ETag", `"`+ID(File{Data: []byte("pointer " + f.Name)})+`"`)
		if rr.RedirectOnGETOnly && r.Method == http.MethodHead {
			w.Header().Set("Content-Length", strconv.Itoa(len(f.Data)))
			w.WriteHeader(http.StatusOK)
			return
		}
		w.Header().Set("Location", h.CDNURL+"/blobs/"+ID(File{Data: f.Data, LFS: true})+"?name="+f.Name+"&X-Amz-Signature=fake")
		w.WriteHeader(http.StatusFound)
		return
	}
	w.Header().Set("ETag", `"`+ID(f)+`"`)
	h.serveBytes(w, r, f)
}

func (h *Hub) serveCDN(w http.ResponseWriter, r *http.Request) {
	h.record("cdn", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		var found *File
		for _, rr := range h.repos {
			if f, ok := rr.files[r.URL.Query().Get("name")]; ok && f.LFS && "/blobs/"+ID(File{Data: f.Data, LFS: true}) == r.URL.Path {
				found = &f
			}
		}
		h.mu.Unlock()
		if found == nil {
			http.Error(w, "NoSuchKey", http.StatusNotFound)
			return
		}
		h.serveBytes(w, r, *found)
	})).ServeHTTP(w, r)
}

// serveBytes answers a GET or HEAD of f's bytes, honouring "Range: bytes=N-" and the file's
// next fault.
func (h *Hub) serveBytes(w http.ResponseWriter, r *http.Request, f File) {
	var flt *fault
	if r.Method == http.MethodGet {
		flt = h.nextFault(f.Name)
	}
	size := int64(len(f.Data))
	start, status := int64(0), http.StatusOK
	if rg := r.Header.Get("Range"); rg != "" && (flt == nil || flt.kind != ignoreRange) {
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(rg, "bytes="), "-"), 10, 64)
		if err != nil || !strings.HasPrefix(rg, "bytes=") || !strings.HasSuffix(rg, "-") || n < 0 {
			http.Error(w, "only bytes=N- ranges", http.StatusBadRequest)
			return
		}
		if n >= size {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", size))
			http.Error(w, "range not satisfiable", http.StatusRequestedRangeNotSatisfiable)
			return
		}
		start, status = n, http.StatusPartialContent
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", n, size-1, size))
	}
	body := f.Data[start:]
	w.Header().Set("Accept-Ranges", "bytes")
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return
	}
	switch {
	case flt != nil && flt.kind == drop:
		part := body[:min(flt.after, int64(len(body)))]
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer conn.Close()
		fmt.Fprintf(buf, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
		_ = w.Header().Write(buf)
		fmt.Fprintf(buf, "Connection: close\r\n\r\n")
		h.addServed(f.Name, int64(len(part)))
		_, _ = buf.Write(part)
		_ = buf.Flush()
	case flt != nil && flt.kind == stall:
		part := body[:min(flt.after, int64(len(body)))]
		w.WriteHeader(status)
		h.addServed(f.Name, int64(len(part)))
		_, _ = w.Write(part)
		_ = http.NewResponseController(w).Flush()
		close(flt.reached)
		<-r.Context().Done()
	default:
		w.WriteHeader(status)
		h.addServed(f.Name, int64(len(body)))
		_, _ = w.Write(body)
	}
}
