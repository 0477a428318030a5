package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/seqembed/seqembed/internal/natsconn"
	"github.com/seqembed/seqembed/telemetry"
)

// natsFlags are the connection settings every command shares. Secrets may come from the
// environment (SEQEMBED_PASSWORD, SEQEMBED_TOKEN, ...) instead of the command line, and are
// never logged: only the redacted URL is.
type natsFlags struct {
	URL, Creds, NKey, User, Password, Token string
	TLSCA, TLSCert, TLSKey                  string
	TLSFirst                                bool
}

func (f *natsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.URL, "nats", nats.DefaultURL, "NATS server URL(s), comma-separated")
	fs.StringVar(&f.Creds, "creds", "", "NATS user credentials file (JWT + nkey seed)")
	fs.StringVar(&f.NKey, "nkey", "", "file holding an nkey seed (SU...) to authenticate with")
	fs.StringVar(&f.User, "user", "", "NATS user name")
	fs.StringVar(&f.Password, "password", "", "NATS password (prefer SEQEMBED_PASSWORD)")
	fs.StringVar(&f.Token, "token", "", "NATS auth token (prefer SEQEMBED_TOKEN)")
	fs.StringVar(&f.TLSCA, "tls-ca", "", "PEM file of CAs that verify the server (enables TLS)")
	fs.StringVar(&f.TLSCert, "tls-cert", "", "PEM client certificate for mutual TLS (with --tls-key)")
	fs.StringVar(&f.TLSKey, "tls-key", "", "PEM client key for mutual TLS")
	fs.BoolVar(&f.TLSFirst, "tls-first", false, "TLS handshake before the NATS INFO (servers with handshake_first)")
}

// options turns the flags into nats.Options; it checks combinations before dialling.
func (f *natsFlags) options() ([]nats.Option, error) {
	if f.URL == "" {
		return nil, errors.New("no NATS URL: pass --nats")
	}
	var opts []nats.Option
	methods := 0
	if f.Creds != "" {
		opts = append(opts, nats.UserCredentials(f.Creds))
		methods++
	}
	if f.NKey != "" {
		o, err := nats.NkeyOptionFromSeed(f.NKey)
		if err != nil {
			return nil, fmt.Errorf("--nkey %s: %w", f.NKey, err)
		}
		opts = append(opts, o)
		methods++
	}
	if f.User != "" || f.Password != "" {
		if f.User == "" || f.Password == "" {
			return nil, errors.New("--user and --password go together")
		}
		opts = append(opts, nats.UserInfo(f.User, f.Password))
		methods++
	}
	if f.Token != "" {
		opts = append(opts, nats.Token(f.Token))
		methods++
	}
	if methods > 1 {
		return nil, errors.New("choose one of --creds, --nkey, --user/--password, --token")
	}
	if (f.TLSCert == "") != (f.TLSKey == "") {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	if f.TLSCA != "" || f.TLSCert != "" {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if f.TLSCA != "" {
			pem, err := os.ReadFile(f.TLSCA)
			if err != nil {
				return nil, fmt.Errorf("--tls-ca: %w", err)
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("--tls-ca %s: no PEM certificates", f.TLSCA)
			}
		}
		if f.TLSCert != "" {
			cert, err := tls.LoadX509KeyPair(f.TLSCert, f.TLSKey)
			if err != nil {
				return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, nats.Secure(cfg))
		if f.TLSFirst {
			opts = append(opts, nats.TLSHandshakeFirst())
		}
	}
	return opts, nil
}

// connect dials NATS with the flags' security settings and reconnects forever; connection events
// are logged with the redacted URL.
func (f *natsFlags) connect(name string, log *zap.Logger) (*nats.Conn, error) {
	return f.connectWatched(name, log, nil, nil)
}

// connectWatched is connect that also reports the connection to health (readiness is false while
// NATS is down) and to cm (reconnects, client-side slow-consumer drops); both may be nil.
func (f *natsFlags) connectWatched(name string, log *zap.Logger, health *telemetry.Health, cm *telemetry.ConnMetrics) (*nats.Conn, error) {
	opts, err := f.options()
	if err != nil {
		return nil, err
	}
	opts = append(opts, natsconn.Watched(name, log, natsconn.Events{
		Down: func() { health.SetNATS(false) },
		Up: func() {
			health.SetNATS(true)
			cm.Reconnected()
		},
		SlowConsumer: cm.SlowConsumer,
	})...)
	nc, err := nats.Connect(f.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: %s", redact(f.URL, f.secrets()), redact(err.Error(), f.secrets()))
	}
	return nc, nil
}

// secrets are the strings no message may print: the password and token flags and every password
// or token inside the URLs (user:password@ or token@).
func (f *natsFlags) secrets() []string {
	out := []string{f.Password, f.Token}
	for _, m := range urlUserinfo.FindAllStringSubmatch(f.URL, -1) {
		user, pass, _ := strings.Cut(m[1], ":")
		out = append(out, pass)
		if pass == "" { // nats://TOKEN@host
			out = append(out, user)
		}
	}
	return out
}

// urlUserinfo matches the userinfo of a URL (between "//" and "@").
var urlUserinfo = regexp.MustCompile(`//([^/@,\s]+)@`)

// redact replaces each non-empty secret in s with "[REDACTED]".
func redact(s string, secrets []string) string {
	for _, x := range secrets {
		if x != "" {
			s = strings.ReplaceAll(s, x, "[REDACTED]")
		}
	}
	return s
}

// dial is connect plus a JetStream context, for the commands that only talk to JetStream; it
// logs connection events at warn level to stderr. The caller closes the connection.
func (f *natsFlags) dial(name string, opts ...jetstream.JetStreamOpt) (*nats.Conn, jetstream.JetStream, error) {
	log, err := telemetry.NewLogger("warn", "console")
	if err != nil {
		return nil, nil, err
	}
	nc, err := f.connect(name, log)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc, opts...)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}
