package precision

import (
	"sync"
	"sync/atomic"
)

// tile is the side of the blocks of the similarity matrix: two blocks of 32 rows of ESM-2 3B's
// 2560 dimensions (640 KiB) stay in a core's L2 cache.
const tile = 32

// topK is the best k (similarity, index) pairs seen for each of n rows, best first: higher
// similarity, then lower index (a total order, so the result does not depend on the order
// pairs arrive in).
type topK struct {
	k   int
	sim []float32 // n×k
	idx []int32   // n×k
	cnt []int32   // n: how many of row i's k slots are filled
}

func newTopK(n, k int) *topK {
	return &topK{k: k, sim: make([]float32, n*k), idx: make([]int32, n*k), cnt: make([]int32, n)}
}

// better says whether (s, j) goes before (t, l).
func better(s float32, j int32, t float32, l int32) bool { return s > t || (s == t && j < l) }

// push offers j, at similarity s, as a neighbour of row i.
func (t *topK) push(i int, s float32, j int32) {
	sim, idx := t.sim[i*t.k:(i+1)*t.k], t.idx[i*t.k:(i+1)*t.k]
	c := int(t.cnt[i])
	if c == t.k {
		if !better(s, j, sim[c-1], idx[c-1]) {
			return
		}
		c-- // the last one drops out
	} else {
		t.cnt[i]++
	}
	p := c
	for p > 0 && better(s, j, sim[p-1], idx[p-1]) {
		sim[p], idx[p] = sim[p-1], idx[p-1]
		p--
	}
	sim[p], idx[p] = s, j
}

// nearest is, for each of the n unit rows of x (row-major, n×dim), the indices of its k most
// similar other rows by dot product, best first (ties: the lower index), as one n×k slice. The
// upper triangle of the similarity matrix is computed in tile×tile blocks handed out to workers
// goroutines; each keeps its own top k of every row (the pairs of a block go to both rows), and
// the lists are merged at the end. Every similarity is the same sequential float32 sum whatever
// the block or worker, so the result is deterministic. k must be at most n-1.
func nearest(x []float32, n, dim, k, workers int) []int32 {
	nb := (n + tile - 1) / tile
	var blocks [][2]int // (I, J), I ≤ J
	for bi := range nb {
		for bj := bi; bj < nb; bj++ {
			blocks = append(blocks, [2]int{bi, bj})
		}
	}
	workers = max(1, min(workers, len(blocks)))
	parts := make([]*topK, workers)
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		parts[w] = newTopK(n, k)
		wg.Go(func() {
			part, dots := parts[w], make([]float32, tile*tile)
			for {
				b := int(next.Add(1) - 1)
				if b >= len(blocks) {
					return
				}
				i0, j0 := blocks[b][0]*tile, blocks[b][1]*tile
				i1, j1 := min(i0+tile, n), min(j0+tile, n)
				dotBlock(x, dim, i0, i1, j0, j1, dots)
				for i := i0; i < i1; i++ {
					row := dots[(i-i0)*tile:]
					for j := max(j0, i+1); j < j1; j++ { // the diagonal block: j > i only
						s := row[j-j0]
						part.push(i, s, int32(j))
						part.push(j, s, int32(i))
					}
				}
			}
		})
	}
	wg.Wait()
	if workers == 1 {
		return parts[0].idx
	}
	all := newTopK(n, k)
	for i := range n {
		for _, p := range parts {
			for c := range int(p.cnt[i]) {
				all.push(i, p.sim[i*k+c], p.idx[i*k+c])
			}
		}
	}
	return all.idx
}

// dotBlock writes the dot products of rows i0..i1-1 with rows j0..j1-1 of x into out (row
// i-i0, column j-j0, stride tile), two rows by four at a time. Each product is summed over the
// dimensions in order in one float32 accumulator, so it does not depend on which path made it.
func dotBlock(x []float32, dim, i0, i1, j0, j1 int, out []float32) {
	rowOf := func(i int) []float32 { return x[i*dim : (i+1)*dim : (i+1)*dim] }
	i := i0
	for ; i+1 < i1; i += 2 {
		a0, a1 := rowOf(i), rowOf(i+1)
		o0, o1 := out[(i-i0)*tile:], out[(i+1-i0)*tile:]
		j := j0
		for ; j+3 < j1; j += 4 {
			b0, b1, b2, b3 := rowOf(j), rowOf(j+1), rowOf(j+2), rowOf(j+3)
			var s00, s01, s02, s03, s10, s11, s12, s13 float32
			a1 := a1[:len(a0)]
			b0, b1, b2, b3 = b0[:len(a0)], b1[:len(a0)], b2[:len(a0)], b3[:len(a0)]
			for d, u := range a0 {
				v := a1[d]
				s00 += u * b0[d]
				s01 += u * b1[d]
				s02 += u * b2[d]
				s03 += u * b3[d]
				s10 += v * b0[d]
				s11 += v * b1[d]
				s12 += v * b2[d]
				s13 += v * b3[d]
			}
			c := j - j0
			o0[c], o0[c+1], o0[c+2], o0[c+3] = s00, s01, s02, s03
			o1[c], o1[c+1], o1[c+2], o1[c+3] = s10, s11, s12, s13
		}
		for ; j < j1; j++ {
			o0[j-j0], o1[j-j0] = dot(a0, rowOf(j)), dot(a1, rowOf(j))
		}
	}
	for ; i < i1; i++ {
		a, o := rowOf(i), out[(i-i0)*tile:]
		for j := j0; j < j1; j++ {
			o[j-j0] = dot(a, rowOf(j))
		}
	}
}

// dot is a·b summed in order in float32 (dotBlock's sum).
func dot(a, b []float32) float32 {
	b = b[:len(a)]
	var s float32
	for d, u := range a {
		s += u * b[d]
	}
	return s
}
