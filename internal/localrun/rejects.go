package localrun

import (
	"errors"
	"io"
	"sort"

	"github.com/seqembed/seqembed/batcher"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/fasta"
	"github.com/seqembed/seqembed/ingest"
)

// workerRejects turns the dead letters a worker made (those with an input stream sequence; the
// ones refused at publish time have none and come from ingest with their location) into rejects
// rows: the file and line found by reading the inputs again for their ids (the first record of
// an id is the one stored), the 1-based position of the first residue outside tok's alphabet for
// invalid_residue. Standard input and pipes cannot be read again: rows not found in the other
// files get the one such input's name and no line (no name when there are several).
func workerRejects(inputs []string, dls []consumer.DeadLetter, tok *batcher.Tokenizer) []ingest.Reject {
	var out []ingest.Reject
	want := map[string][]int{} // id → indexes into out
	for _, d := range dls {
		if d.StreamSeq == 0 {
			continue
		}
		r := ingest.Reject{ID: d.ID, Reason: d.Reason, Message: d.Error}
		if d.Reason == consumer.ReasonInvalid && tok != nil {
			var re *batcher.ResidueError
			if errors.As(tok.Validate(d.Data), &re) {
				r.Position = re.Pos + 1
			}
		}
		if d.ID != "" {
			want[d.ID] = append(want[d.ID], len(out))
		}
		out = append(out, r)
	}
	var once []string // inputs that cannot be read again
	for _, path := range inputs {
		if !ingest.Rereadable(path) {
			once = append(once, path)
			continue
		}
		if len(want) > 0 {
			locate(path, want, out)
		}
	}
	if len(once) == 1 {
		for _, idx := range want {
			for _, i := range idx {
				out[i].File = fasta.DisplayName(once[0])
			}
		}
	}
	return out
}

// locate reads the FASTA file at path and, for each record whose id is in want, sets the file
// and line of its rows in out and removes the id from want. A file that cannot be read again
// leaves its rows unlocated: the rows are a report, not the job.
func locate(path string, want map[string][]int, out []ingest.Reject) {
	r, closer, err := fasta.Open(path)
	if err != nil {
		return
	}
	defer closer.Close()
	name := fasta.DisplayName(path)
	for len(want) > 0 {
		rec, err := r.Next()
		if errors.Is(err, io.EOF) || (err != nil && !fasta.Recoverable(err)) {
			return
		}
		if err != nil {
			continue
		}
		if idx, ok := want[rec.ID]; ok {
			for _, i := range idx {
				out[i].File, out[i].Line = name, rec.Line
			}
			delete(want, rec.ID)
		}
	}
}

// sortRejects orders rows as the inputs list their files, then by line; rows without a file
// come last, in the order they were found.
func sortRejects(inputs []string, rows []ingest.Reject) {
	order := map[string]int{}
	for i, p := range inputs {
		if _, ok := order[fasta.DisplayName(p)]; !ok {
			order[fasta.DisplayName(p)] = i
		}
	}
	rank := func(r ingest.Reject) int {
		if i, ok := order[r.File]; ok {
			return i
		}
		return len(inputs)
	}
	sort.SliceStable(rows, func(i, j int) bool {
		if a, b := rank(rows[i]), rank(rows[j]); a != b {
			return a < b
		}
		return rows[i].Line < rows[j].Line
	})
}
