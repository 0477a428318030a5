package arrowout

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Output stream defaults used by EnsureStream.
const (
	DefaultStreamName = "EMBEDDINGS"
	DefaultSubjects   = "embeddings.>"
	DefaultDuplicates = 10 * time.Minute
)

// Subject is where the embeddings of model's records in job go: embeddings.<model>.<job>, or
// embeddings.<model> for records outside any job (see consumer.JobSubject).
func Subject(model, job string) string {
	if job == "" {
		return "embeddings." + model
	}
	return "embeddings." + model + "." + job
}

// ModelSubjects are the subjects of all of model's embeddings: outside any job and in every job.
func ModelSubjects(model string) []string {
	return []string{Subject(model, ""), Subject(model, "*")}
}

// StreamConfig describes the output stream. The zero value is usable: every
// zero field takes its documented default. Retention is always limits.
type StreamConfig struct {
	// Name of the stream. Default DefaultStreamName ("EMBEDDINGS").
	Name string
	// Subjects the stream captures. Default [DefaultSubjects] ("embeddings.>").
	Subjects []string
	// MaxBytes caps the stored bytes. Default 0: unlimited.
	MaxBytes int64
	// MaxAge is how long a message is kept. Default 0: for ever.
	MaxAge time.Duration
	// Replicas in clustered JetStream. Default 0: 1.
	Replicas int
	// Storage backend. Default (the zero value) jetstream.FileStorage.
	Storage jetstream.StorageType
	// Duplicates is the Nats-Msg-Id deduplication window; a batch
	// republished within it is not stored twice. Default DefaultDuplicates
	// (10m).
	Duplicates time.Duration
	// DiscardOld makes a full stream (MaxBytes reached) drop its oldest
	// messages. Default false: DiscardNew, so a full stream rejects new
	// parts, Publish fails with ErrPublish and the inputs stay unacked,
	// instead of silently losing embeddings no sink has read yet.
	DiscardOld bool
}

// jetstreamConfig applies the defaults and converts c.
func (c StreamConfig) jetstreamConfig() (jetstream.StreamConfig, error) {
	if c.MaxBytes < 0 || c.Replicas < 0 || c.Duplicates < 0 || c.MaxAge < 0 {
		return jetstream.StreamConfig{}, fmt.Errorf("%w: stream config has a negative MaxBytes, MaxAge, Replicas or Duplicates: %+v", ErrOption, c)
	}
	sc := jetstream.StreamConfig{
		Name:       c.Name,
		Subjects:   c.Subjects,
		Retention:  jetstream.LimitsPolicy,
		MaxBytes:   c.MaxBytes,
		MaxAge:     c.MaxAge,
		MaxMsgs:    -1,
		Discard:    jetstream.DiscardNew,
		Storage:    c.Storage,
		Replicas:   c.Replicas,
		Duplicates: c.Duplicates,
	}
	if sc.Name == "" {
		sc.Name = DefaultStreamName
	}
	if len(sc.Subjects) == 0 {
		sc.Subjects = []string{DefaultSubjects}
	}
	if sc.MaxBytes == 0 {
		sc.MaxBytes = -1
	}
	if sc.Replicas == 0 {
		sc.Replicas = 1
	}
	if sc.Duplicates == 0 {
		sc.Duplicates = DefaultDuplicates
	}
	if c.DiscardOld {
		sc.Discard = jetstream.DiscardOld
	}
	return sc, nil
}

// EnsureStream creates the output stream described by cfg, or updates an
// existing one to match it; calling it again with the same cfg is a no-op.
// Errors wrap ErrOption for an invalid cfg, or the JetStream API error (for
// instance an update the server refuses, such as a storage change, or
// subjects that overlap another stream's).
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	sc, err := cfg.jetstreamConfig()
	if err != nil {
		return nil, err
	}
	s, err := js.CreateOrUpdateStream(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("arrowout: ensure stream %q (subjects %v): %w", sc.Name, sc.Subjects, err)
	}
	return s, nil
}
