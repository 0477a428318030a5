package precision_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/seqembed/seqembed/internal/e2etest"
	"github.com/seqembed/seqembed/internal/precision"
)

var (
	goldenJSON  = filepath.Join(e2etest.TinyModel, "golden.json")
	goldenFASTA = filepath.Join(e2etest.Root, "testdata", "golden-input.fasta")
)

// loadGolden is the tiny model's golden file.
func loadGolden(t *testing.T) *precision.Golden {
	t.Helper()
	g, err := precision.LoadGolden(goldenJSON)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// TestPrecisionEmbedFASTAMatchesGolden: the golden FASTA embedded in batches of at most 3 rows,
// two in flight (so rows of many batches come back out of order) gives every record once, in
// file order, each with its own PyTorch vector within 1e-4: no row lands on another id.
func TestPrecisionEmbedFASTAMatchesGolden(t *testing.T) {
	e2etest.RequireORT(t)
	cfg := e2etest.Config()
	cfg.MaxBatchRows = 3
	got, err := precision.Embed(context.Background(), cfg, goldenFASTA)
	if err != nil {
		t.Fatal(err)
	}
	g := loadGolden(t)
	want := g.Embeddings()
	if !slices.Equal(got.IDs, want.IDs) {
		t.Fatalf("ids %v\nwant the file's order %v", got.IDs, want.IDs)
	}
	if got.Model != "esm2-tiny" || got.DType != "float32" || got.Dim() != 64 {
		t.Errorf("model %s %s dim %d", got.Model, got.DType, got.Dim())
	}
	for i, id := range got.IDs {
		e2etest.CheckEmbedding(t, id, got.Vecs[i], want.Vecs[i])
	}
}

// TestPrecisionGoldenPasses: the tiny model against its golden file passes at the golden tests'
// cosine (gpurun TestGoldenParity: 0.99999), and against itself gives cosine 1 and overlap 1.
func TestPrecisionGoldenPasses(t *testing.T) {
	e2etest.RequireORT(t)
	ctx := context.Background()
	g := loadGolden(t)
	cand, err := precision.EmbedGolden(ctx, e2etest.Config(), g)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := precision.Compare(cand, g.Embeddings())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("against golden: %+v", rep)
	if rep.N != 20 || rep.K != 10 || rep.MinCosine < 0.99999 || rep.MeanOverlap < 0.95 {
		t.Errorf("against golden: %+v", rep)
	}
	again, err := precision.EmbedGolden(ctx, e2etest.Config(), g)
	if err != nil {
		t.Fatal(err)
	}
	if rep, err = precision.Compare(cand, again); err != nil || rep.MinCosine < 0.999999 || rep.MinOverlap != 1 {
		t.Errorf("against itself: %+v, %v", rep, err)
	}
}

// TestPrecisionEmbedSkipsAndKeeps: records a worker dead-letters are skipped, an id twice is
// kept twice (Compare refuses it, naming it), and a file with nothing to embed is an error.
func TestPrecisionEmbedSkipsAndKeeps(t *testing.T) {
	e2etest.RequireORT(t)
	dir := t.TempDir()
	fa := filepath.Join(dir, "in.fa")
	if err := os.WriteFile(fa, []byte(">a\nMKTAYIAK\n>bad\nMKT*AY\n>b\nMLLAVLYC\n>a\nMKTAYIAK\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := precision.Embed(context.Background(), e2etest.Config(), fa)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.IDs, []string{"a", "b", "a"}) {
		t.Fatalf("ids %v, want a b a", got.IDs)
	}
	if _, err := precision.Compare(got, got); !errors.Is(err, precision.ErrMismatch) || !strings.Contains(err.Error(), `id "a" is twice`) {
		t.Errorf("Compare with a doubled id: %v", err)
	}
	empty := filepath.Join(dir, "empty.fa")
	if err := os.WriteFile(empty, []byte(">bad\nMK*T\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := precision.Embed(context.Background(), e2etest.Config(), empty); !errors.Is(err, precision.ErrEmbed) || !strings.Contains(err.Error(), "no record to embed") {
		t.Errorf("nothing to embed: %v", err)
	}
	cfg := e2etest.Config()
	cfg.ModelDir = filepath.Join(dir, "no-model")
	if _, err := precision.Embed(context.Background(), cfg, fa); !errors.Is(err, precision.ErrEmbed) || !strings.Contains(err.Error(), "no-model") {
		t.Errorf("missing model: %v", err)
	}
}

// TestPrecisionLoadGoldenErrors: a missing file, bad JSON, and records without what a reference
// needs are ErrGolden naming the file and the record.
func TestPrecisionLoadGoldenErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ name, body, want string }{
		{"missing.json", "", "no such file"},
		{"bad.json", "{", "unexpected end"},
		{"none.json", `{"records": []}`, "no records"},
		{"noid.json", `{"records": [{"sequence": "MK", "embedding": [1]}]}`, "record 1 has no id"},
		{"dims.json", `{"records": [{"id": "a", "sequence": "MK", "embedding": [1, 2]}, {"id": "b", "sequence": "MK", "embedding": [1]}]}`, `record 2 ("b")`},
	} {
		path := filepath.Join(dir, tc.name)
		if tc.body != "" {
			if err := os.WriteFile(path, []byte(tc.body), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		_, err := precision.LoadGolden(path)
		if !errors.Is(err, precision.ErrGolden) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.name) {
			t.Errorf("%s: err = %v, want ErrGolden with %q", tc.name, err, tc.want)
		}
	}
}

// TestPrecisionFP16CopyAndOtherModel: a float16 build of the tiny model's weights against the
// float32 model stays above the command's defaults (cosine 0.999, overlap 0.95); a model of
// other weights falls far below them.
func TestPrecisionFP16CopyAndOtherModel(t *testing.T) {
	e2etest.RequireORT(t)
	ctx := context.Background()
	embed := func(dir string) *precision.Embeddings {
		cfg := e2etest.Config()
		if dir != "" {
			cfg.ModelDir = dir
		}
		e, err := precision.Embed(ctx, cfg, goldenFASTA)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	ref := embed("")
	fp16 := embed(e2etest.FP16TinyModel(t))
	if fp16.DType != "float16" {
		t.Errorf("fp16 build: dtype %q", fp16.DType)
	}
	rep, err := precision.Compare(fp16, ref)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("float16 copy: min cosine %.7f, mean overlap %.3f", rep.MinCosine, rep.MeanOverlap)
	if rep.MinCosine < 0.999 || rep.MeanOverlap < 0.95 || rep.MinCosine > 1-1e-12 {
		t.Errorf("float16 copy against float32: %+v", rep)
	}
	if rep, err = precision.Compare(embed(e2etest.RandomTinyModel(t, 1)), ref); err != nil || rep.MinCosine > 0.9 {
		t.Errorf("another model: %+v, %v", rep, err)
	}
}
