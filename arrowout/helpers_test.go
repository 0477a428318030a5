package arrowout

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	natstest "github.com/nats-io/nats-server/v2/test"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var testMeta = Meta{Model: "esm2_t6_8M_UR50D", ModelSHA256: "ab12cd34", Pooling: "mean", Dim: 8}

// makeBatch returns a batch of n rows of dimension dim whose stream
// sequences start at seq0. Values include -0, ±Inf, a NaN with payload and
// subnormals so that round trips are checked bit for bit.
func makeBatch(seq uint64, n, dim int, seq0 uint64) *Batch {
	b := &Batch{
		Seq:          seq,
		IDs:          make([]string, n),
		StreamSeqs:   make([]uint64, n),
		Lengths:      make([]int32, n),
		Truncated:    make([]bool, n),
		Embeddings:   make([]float32, n*dim),
		SeqSHA256s:   make([]string, n),
		Descriptions: make([]string, n),
		InputLengths: make([]int32, n),
		StopStripped: make([]bool, n),
		InputIndexes: make([]int64, n),
	}
	special := []float32{
		float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)),
		math.Float32frombits(0x7fc0_1234), math.Float32frombits(1), math.MaxFloat32,
	}
	for i := range n {
		b.IDs[i] = fmt.Sprintf("UniRef50_%0*d", 1+i%7, i) // varying id lengths
		b.StreamSeqs[i] = seq0 + uint64(i)
		b.Lengths[i] = int32(50 + i%1000)
		b.Truncated[i] = i%3 == 0
		// The identity depends on the row number only: a batch made again holds the same records.
		sum := sha256.Sum256([]byte(b.IDs[i]))
		b.SeqSHA256s[i] = hex.EncodeToString(sum[:])
		if i%4 != 1 {
			b.Descriptions[i] = fmt.Sprintf("protein %d \u00e9\u4e2d\t%s", i, strings.Repeat("d", i%13))
		}
		b.InputLengths[i] = b.Lengths[i] + int32(i%2)
		b.StopStripped[i] = i%5 == 0
		b.InputIndexes[i] = int64(i) - 1 // -1 (unknown) for row 0
		for j := range dim {
			k := i*dim + j
			if k%97 < len(special) {
				b.Embeddings[k] = special[k%97]
			} else {
				b.Embeddings[k] = float32(i) + float32(j)/float32(dim) - 0.5
			}
		}
	}
	return b
}

// wantRows returns rows [lo,hi) of b as Rows.
func wantRows(b *Batch, dim, lo, hi int) []Row {
	rows := make([]Row, 0, hi-lo)
	for i := lo; i < hi; i++ {
		rows = append(rows, Row{
			ID: b.IDs[i], StreamSeq: b.StreamSeqs[i], Length: b.Lengths[i], Truncated: b.Truncated[i],
			Embedding: b.Embeddings[i*dim : (i+1)*dim], SeqSHA256: b.SeqSHA256s[i], Description: b.Descriptions[i],
			InputLength: b.InputLengths[i], StopStripped: b.StopStripped[i], InputIndex: b.InputIndexes[i], Chunks: b.chunks(i),
		})
	}
	return rows
}

// equalRows compares rows, embeddings bit for bit.
func equalRows(t *testing.T, got, want []Row) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d rows, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		ge, we := g, w
		ge.Embedding, we.Embedding = nil, nil
		if !reflect.DeepEqual(ge, we) {
			t.Fatalf("row %d: got %+v, want %+v", i, ge, we)
		}
		equalFloats(t, fmt.Sprintf("row %d (%s)", i, w.ID), g.Embedding, w.Embedding)
	}
}

func equalFloats(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: embedding has %d values, want %d", what, len(got), len(want))
	}
	for j := range want {
		if math.Float32bits(got[j]) != math.Float32bits(want[j]) {
			t.Fatalf("%s: value %d is %08x, want %08x", what, j, math.Float32bits(got[j]), math.Float32bits(want[j]))
		}
	}
}

// runJetStream starts an in-process JetStream server, optionally adjusted
// by mod, and returns it with a connection and a JetStream context.
func runJetStream(t *testing.T, mod func(*server.Options)) (*server.Server, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	opts := natstest.DefaultTestOptions
	opts.Port = -1
	opts.JetStream = true
	opts.StoreDir = t.TempDir()
	if mod != nil {
		mod(&opts)
	}
	srv := natstest.RunServer(&opts)
	t.Cleanup(srv.Shutdown)
	nc, js := connect(t, srv.ClientURL())
	return srv, nc, js
}

func connect(t *testing.T, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return nc, js
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
