package fasta

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
)

const residues = "ACDEFGHIKLMNPQRSTVWY"

// genFASTA returns about size bytes of FASTA: UniProt-style headers and
// sequences of 50 to 1500 residues wrapped at 60 columns.
func genFASTA(size int) []byte {
	rng := rand.New(rand.NewPCG(1, 2))
	var buf bytes.Buffer
	for i := 0; buf.Len() < size; i++ {
		fmt.Fprintf(&buf, ">sp|P%05d|PROT%d_HUMAN Synthetic protein %d OS=Homo sapiens OX=9606\n", i, i, i)
		n := 50 + rng.IntN(1450)
		for j := 0; j < n; j += 60 {
			for k := j; k < min(j+60, n); k++ {
				buf.WriteByte(residues[rng.IntN(len(residues))])
			}
			buf.WriteByte('\n')
		}
	}
	return buf.Bytes()
}

func BenchmarkReader(b *testing.B) {
	data := genFASTA(5 << 20)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		r, err := NewReader(bytes.NewReader(data))
		if err != nil {
			b.Fatal(err)
		}
		for {
			if _, err := r.Next(); err == io.EOF {
				break
			} else if err != nil {
				b.Fatal(err)
			}
		}
	}
}
