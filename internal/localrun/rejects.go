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
// rows: the file and line found from the record's input index (Seq-Index: its position among the
// records of the inputs, fileRecords of them in each input in turn) by reading that file again,
// the 1-based position of the first residue outside tok's alphabet for invalid_residue.
// Standard input and pipes cannot be read again: their rows get the input's name and no line.
func workerRejects(inputs []string, fileRecords []int, dls []consumer.DeadLetter, tok *batcher.Tokenizer) []ingest.Reject {
	var out []ingest.Reject
	want := make([]map[int]int, len(inputs)) // per input: record index in the file → index into out
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
		start := int64(0)
		for i, n := range fileRecords {
			if i >= len(inputs) || d.InputIndex < start {
				break
			}
			if d.InputIndex < start+int64(n) {
				r.File = fasta.DisplayName(inputs[i])
				if want[i] == nil {
					want[i] = map[int]int{}
				}
				want[i][int(d.InputIndex-start)] = len(out)
				break
			}
			start += int64(n)
		}
		out = append(out, r)
	}
	for i, path := range inputs {
		if len(want[i]) > 0 && ingest.Rereadable(path) {
			locate(path, want[i], out)
		}
	}
	return out
}

// locate reads the FASTA file at path and sets the line of the rows in out of the records whose
// position in the file (0-based, every record counted, as ingest counts them) is in want. A file
// that cannot be read again leaves its rows without a line: the rows are a report, not the job.
func locate(path string, want map[int]int, out []ingest.Reject) {
	r, closer, err := fasta.Open(path)
	if err != nil {
		return
	}
	defer closer.Close()
	for k, left := 0, len(want); left > 0; k++ {
		rec, err := r.Next()
		if errors.Is(err, io.EOF) || (err != nil && !fasta.Recoverable(err)) {
			return
		}
		i, ok := want[k]
		if !ok {
			continue
		}
		left--
		if err == nil {
			out[i].Line = rec.Line
		} else if pe := (*fasta.ParseError)(nil); errors.As(err, &pe) {
			out[i].Line = pe.Line
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
