// Package jobs is the ledger of named runs (`--job NAME`): a JetStream key-value bucket with one
// entry per job saying which model its records are for, how many records its publishes put on
// the job's subjects and whether a publish is still under way. A sink (`seqembed sink --job`)
// reads it to know when the job is complete: every publish finished, no record of the job left
// in the input stream (the work queue removes a record only once its embedding or dead-letter
// copy is stored) and every output message of the job read.
//
// Entries are updated with compare-and-set (the entry's revision), retried through
// internal/retry when another publisher of the same job wrote in between.
package jobs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/internal/retry"
)

// Bucket is the key-value bucket of the ledger.
const Bucket = "SEQEMBED_JOBS"

// Errors.
var (
	// ErrNotFound: no job of that name has been published.
	ErrNotFound = errors.New("jobs: job not found")
	// ErrModel: the job exists for another model.
	ErrModel = errors.New("jobs: job belongs to another model")
)

// Job is one ledger entry.
type Job struct {
	Name  string `json:"name"`
	Model string `json:"model"`
	// Published counts the records the job's publishes accounted for: stored on the job's input
	// subject, plus those refused at publish time and dead-lettered there (re-publishes within
	// the stream's dedupe window add only what they newly stored).
	Published int       `json:"published"`
	Publishes int       `json:"publishes"` // publish runs finished
	Active    int       `json:"active"`    // publish runs begun and not finished
	Created   time.Time `json:"created"`
	Updated   time.Time `json:"updated"`
}

// Done reports whether every publish of the job has finished.
func (j Job) Done() bool { return j.Active <= 0 && j.Publishes > 0 }

// NewName returns a fresh job name: "run-" and 12 random hex digits.
func NewName() string {
	var b [6]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return "run-" + hex.EncodeToString(b[:])
}

// Ledger is the jobs bucket.
type Ledger struct {
	kv jetstream.KeyValue
}

// Open opens the ledger, creating its bucket (with replicas copies, at least 1) when missing.
func Open(ctx context.Context, js jetstream.JetStream, replicas int) (*Ledger, error) {
	kv, err := js.KeyValue(ctx, Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: Bucket, History: 1,
			Description: "seqembed jobs: model and published records per --job", Replicas: max(replicas, 1)})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, Bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("jobs: bucket %s: %w", Bucket, err)
	}
	return &Ledger{kv: kv}, nil
}

// Get returns the entry of job name (ErrNotFound when there is none).
func (l *Ledger) Get(ctx context.Context, name string) (Job, error) {
	j, _, err := l.get(ctx, name)
	return j, err
}

func (l *Ledger) get(ctx context.Context, name string) (Job, uint64, error) {
	if err := consumer.CheckJob(name); err != nil {
		return Job{}, 0, err
	}
	e, err := l.kv.Get(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Job{}, 0, fmt.Errorf("%w: %q (bucket %s)", ErrNotFound, name, Bucket)
	}
	if err != nil {
		return Job{}, 0, fmt.Errorf("jobs: reading job %q: %w", name, err)
	}
	var j Job
	if err := json.Unmarshal(e.Value(), &j); err != nil {
		return Job{}, 0, fmt.Errorf("jobs: job %q: bad entry: %w", name, err)
	}
	return j, e.Revision(), nil
}

// casRetry retries an update that lost a race with another writer of the same entry.
var casRetry = retry.Policy{Initial: 10 * time.Millisecond, Max: 500 * time.Millisecond, Tries: 50,
	Retryable: func(err error) bool { return errors.Is(err, jetstream.ErrKeyExists) || isWrongSeq(err) }}

func isWrongSeq(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// update applies fn to job name's entry (a fresh one for model when missing) and stores it
// with compare-and-set, retrying when another writer came first.
func (l *Ledger) update(ctx context.Context, name, model string, fn func(*Job) error) (Job, error) {
	var out Job
	err := retry.Do(ctx, casRetry, func(ctx context.Context) error {
		j, rev, err := l.get(ctx, name)
		fresh := errors.Is(err, ErrNotFound)
		if err != nil && !fresh {
			return err
		}
		now := time.Now().UTC()
		if fresh {
			j = Job{Name: name, Model: model, Created: now}
		}
		if model != "" && j.Model != model {
			return fmt.Errorf("%w: job %q is for model %s, not %s: choose another --job", ErrModel, name, j.Model, model)
		}
		if err := fn(&j); err != nil {
			return err
		}
		j.Updated = now
		b, err := json.Marshal(j)
		if err != nil {
			return fmt.Errorf("jobs: job %q: %w", name, err)
		}
		if fresh {
			_, err = l.kv.Create(ctx, name, b)
		} else {
			_, err = l.kv.Update(ctx, name, b, rev)
		}
		out = j
		return err
	})
	if err != nil {
		return Job{}, fmt.Errorf("jobs: updating job %q: %w", name, err)
	}
	return out, nil
}

// Begin records that a publish of job name for model starts (creating the entry).
func (l *Ledger) Begin(ctx context.Context, name, model string) (Job, error) {
	return l.update(ctx, name, model, func(j *Job) error { j.Active++; return nil })
}

// Finish records that a publish begun with Begin ended, having accounted for published records
// (ingest.Stats: Stored + DeadLettered). A failed publish finishes too, with what it stored.
func (l *Ledger) Finish(ctx context.Context, name, model string, published int) (Job, error) {
	return l.update(ctx, name, model, func(j *Job) error {
		j.Active = max(j.Active-1, 0)
		j.Publishes++
		j.Published += published
		return nil
	})
}

// State is where a job stands in the streams.
type State struct {
	Waiting      uint64 // records of the job still in the input stream (not yet embedded or dead-lettered)
	DeadLettered uint64 // dead-letter copies on the job's dead-letter subject
	// OutputSeq is the stream sequence of the last output message of the job (0 = none yet):
	// once Waiting is 0 and the job Done, a sink that has read up to it has every output.
	OutputSeq uint64
}

// StateOf reads job j's State from the input stream in and the output stream out.
func StateOf(ctx context.Context, js jetstream.JetStream, in, out string, j Job) (State, error) {
	var st State
	is, err := js.Stream(ctx, in)
	if err != nil {
		return st, fmt.Errorf("jobs: job %q: input stream %s: %w", j.Name, in, err)
	}
	inSubj, dlq := consumer.JobSubject(j.Model, j.Name), consumer.JobDLQSubject(j.Model, j.Name)
	for _, c := range []struct {
		subj string
		n    *uint64
	}{{inSubj, &st.Waiting}, {dlq, &st.DeadLettered}} {
		info, err := is.Info(ctx, jetstream.WithSubjectFilter(c.subj))
		if err != nil {
			return st, fmt.Errorf("jobs: job %q: input stream %s: %w", j.Name, in, err)
		}
		*c.n = info.State.Subjects[c.subj]
	}
	outS, err := js.Stream(ctx, out)
	if err != nil {
		return st, fmt.Errorf("jobs: job %q: output stream %s: %w", j.Name, out, err)
	}
	m, err := outS.GetLastMsgForSubject(ctx, arrowout.Subject(j.Model, j.Name))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
	case err != nil:
		return st, fmt.Errorf("jobs: job %q: output stream %s: %w", j.Name, out, err)
	default:
		st.OutputSeq = m.Sequence
	}
	return st, nil
}
