package localrun_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/internal/e2etest"
	"github.com/seqembed/seqembed/internal/localrun"
	"go.uber.org/zap"
)

// TestRun is `seqembed run` on the golden FASTA plus a header with no id: the Parquet file
// holds one row per valid record with PyTorch-matching embeddings; the bad record is dead-lettered.
func TestRun(t *testing.T) {
	e2etest.RequireORT(t)
	dir := t.TempDir()
	in, err := os.ReadFile(filepath.Join(e2etest.Root, "testdata", "golden-input.fasta"))
	if err != nil {
		t.Fatal(err)
	}
	fastaPath := filepath.Join(dir, "in.fasta")
	os.WriteFile(fastaPath, append(in, []byte(">\nMKTAYIAK\n>dup-free-bad lowercase\nMKTaa\n")...), 0o644)
	out := filepath.Join(dir, "out.parquet")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sum, err := localrun.Run(ctx, fastaPath, out, e2etest.Config(), nil, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if sum.Published.Records != 22 || sum.Embedded != 20 || sum.DeadLettered != 2 {
		t.Fatalf("summary %+v", sum)
	}
	if sum.Reasons[consumer.ReasonMissingID] != 1 || sum.Reasons[consumer.ReasonInvalid] != 1 {
		t.Errorf("reasons %v", sum.Reasons)
	}
	meta, rows, err := arrowout.ReadParquet(out)
	if err != nil {
		t.Fatal(err)
	}
	if meta.Model != "esm2-tiny" || len(rows) != 20 {
		t.Fatalf("meta %+v, %d rows", meta, len(rows))
	}
	golden := e2etest.LoadGolden(t)
	for _, r := range rows {
		e2etest.CheckEmbedding(t, r.ID, r.Embedding, golden[r.ID].Embedding)
	}
}
