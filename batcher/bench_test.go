package batcher

import (
	"context"
	"math/rand/v2"
	"testing"
)

// uniprotFreq is the amino-acid composition of UniProtKB/Swiss-Prot, in
// percent, used to draw realistic residues.
var uniprotFreq = []struct {
	aa   byte
	freq float64
}{
	{'L', 9.86}, {'A', 8.25}, {'G', 7.07}, {'V', 6.86}, {'E', 6.72}, {'S', 6.63},
	{'I', 5.92}, {'K', 5.80}, {'R', 5.53}, {'D', 5.46}, {'T', 5.35}, {'P', 4.74},
	{'N', 4.06}, {'Q', 3.93}, {'F', 3.86}, {'Y', 2.92}, {'M', 2.41}, {'H', 2.27},
	{'C', 1.38}, {'W', 1.10}, {'X', 0.01},
}

// corpus returns n sequences of 50..1000 residues drawn from uniprotFreq
// and their total length.
func corpus(n int) (seqs [][]byte, total int) {
	r := rand.New(rand.NewPCG(42, 42))
	var sum float64
	for _, f := range uniprotFreq {
		sum += f.freq
	}
	pick := func() byte {
		x := r.Float64() * sum
		for _, f := range uniprotFreq {
			if x -= f.freq; x < 0 {
				return f.aa
			}
		}
		return 'L'
	}
	seqs = make([][]byte, n)
	for i := range seqs {
		s := make([]byte, 50+r.IntN(951))
		for j := range s {
			s[j] = pick()
		}
		seqs[i] = s
		total += len(s)
	}
	return seqs, total
}

// reportResidues reports throughput for b.N passes over total residues.
func reportResidues(b *testing.B, total int) {
	b.ReportMetric(float64(total)*float64(b.N)/b.Elapsed().Seconds(), "residues/s")
}

// BenchmarkTokenize encodes a corpus of 1000 sequences per op into one
// reused buffer.
func BenchmarkTokenize(b *testing.B) {
	tok := mustTokenizer(b, "")
	seqs, total := corpus(1000)
	dst := make([]int64, 1002)
	b.SetBytes(int64(total))
	b.ReportAllocs()
	for b.Loop() {
		for _, s := range seqs {
			tok.Encode(dst, s)
		}
	}
	reportResidues(b, total)
}

// BenchmarkTokenizeNaive is the baseline: a map lookup per residue,
// appended to a fresh slice per sequence.
func BenchmarkTokenizeNaive(b *testing.B) {
	vocab := map[byte]int64{}
	for i := 0; i < len(esmLetters); i++ {
		vocab[esmLetters[i]] = int64(firstLetterID + i)
	}
	seqs, total := corpus(1000)
	b.SetBytes(int64(total))
	b.ReportAllocs()
	var sink []int64
	for b.Loop() {
		for _, s := range seqs {
			ids := []int64{ClsID}
			for _, c := range s {
				id, ok := vocab[c]
				if !ok {
					id = UnkID
				}
				ids = append(ids, id)
			}
			sink = append(ids, EosID)
		}
	}
	_ = sink
	reportResidues(b, total)
}

// BenchmarkBatch pushes a corpus of 1000 sequences per op through
// Add -> loop -> Out -> Release, one producer and one consumer, with the
// default configuration (1022 residues, 16384-token batches).
func BenchmarkBatch(b *testing.B) {
	seqs, total := corpus(1000)
	bt, err := New(DefaultMaxLen)
	if err != nil {
		b.Fatal(err)
	}
	h := bt.Start(context.Background())
	b.SetBytes(int64(total))
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		defer h.Drain()
		ctx := context.Background()
		for i := 0; i < b.N; i++ {
			for j, s := range seqs {
				if err := bt.Add(ctx, Item{ID: "x", Residues: s, StreamSeq: uint64(j)}); err != nil {
					b.Error(err)
					return
				}
			}
		}
	}()
	var rows, batches int
	var eff float64
	for batch := range bt.Out() {
		rows += batch.Rows
		eff += batch.PaddingEfficiency()
		batches++
		batch.Release()
	}
	b.StopTimer()
	if rows != b.N*len(seqs) {
		b.Fatalf("%d rows out, want %d", rows, b.N*len(seqs))
	}
	reportResidues(b, total)
	b.ReportMetric(eff/float64(batches), "pad-eff")
	b.ReportMetric(float64(b.Elapsed())/float64(b.N*total), "ns/residue")
}
