package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"go.uber.org/zap"

	"github.com/seqembed/seqembed/ingest"
	"github.com/seqembed/seqembed/internal/e2etest"
	"github.com/seqembed/seqembed/internal/natstest"
)

// testPKI writes a CA, a server certificate for 127.0.0.1 and a client certificate to dir.
type testPKI struct{ ca, serverCert, serverKey, clientCert, clientKey string }

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "seqembed test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalECPrivateKey(key)
		return write(name+".pem", "CERTIFICATE", der), write(name+"-key.pem", "EC PRIVATE KEY", kder)
	}
	p := testPKI{ca: write("ca.pem", "CERTIFICATE", caDER)}
	p.serverCert, p.serverKey = leaf("server", 2, x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = leaf("client", 3, x509.ExtKeyUsageClientAuth)
	return p
}

// TestTLSAndAuth runs publish → worker → output against a server that requires TLS with a client
// certificate and a user/password, with the connections made from the commands' flags; wrong or
// missing credentials are refused.
func TestTLSAndAuth(t *testing.T) {
	e2etest.RequireORT(t)
	pki := newTestPKI(t)
	srv := natstest.Server(t, func(o *server.Options) {
		cert, err := tls.LoadX509KeyPair(pki.serverCert, pki.serverKey)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pem, _ := os.ReadFile(pki.ca)
		pool.AppendCertsFromPEM(pem)
		o.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool,
			ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
		o.TLS, o.TLSVerify = true, true
		o.Users = []*server.User{{Username: "embedder", Password: "s3cret"}}
	})
	good := natsFlags{URL: srv.ClientURL(), User: "embedder", Password: "s3cret",
		TLSCA: pki.ca, TLSCert: pki.clientCert, TLSKey: pki.clientKey}
	for name, f := range map[string]natsFlags{
		"wrong password": func() natsFlags { f := good; f.Password = "nope"; return f }(),
		"no client cert": func() natsFlags { f := good; f.TLSCert, f.TLSKey = "", ""; return f }(),
		"no TLS":         {URL: srv.ClientURL(), User: "embedder", Password: "s3cret"},
	} {
		if nc, err := f.connect("test", zap.NewNop()); err == nil {
			nc.Close()
			t.Errorf("%s: connected", name)
		}
	}
	log := zap.NewNop()
	ncW, err := good.connect("worker", log)
	if err != nil {
		t.Fatal(err)
	}
	defer ncW.Close()
	ncP, err := good.connect("publish", log)
	if err != nil {
		t.Fatal(err)
	}
	defer ncP.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := e2etest.NewWorkerConn(t, ctx, ncW, e2etest.Config()).Start(t, ctx)
	defer w.Wait()
	st, err := ingest.PublishFASTA(ctx, ncP, filepath.Join(e2etest.Root, "testdata", "golden-input.fasta"), w.Model(), nil, log)
	if err != nil || st.Stored != 20 {
		t.Fatalf("publish over TLS: %+v, %v", st, err)
	}
	js, err := jetstream.New(ncP)
	if err != nil {
		t.Fatal(err)
	}
	if seen := e2etest.OutputIDs(t, js, 20); len(seen) != 20 {
		t.Fatalf("outputs %v", seen)
	}
}

// TestTokenAndNKey: the --token and --nkey flags authenticate; a wrong token is refused; flag
// combinations that make no sense are rejected before dialling.
func TestTokenAndNKey(t *testing.T) {
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := user.PublicKey()
	seed, _ := user.Seed()
	seedFile := filepath.Join(t.TempDir(), "user.nk")
	os.WriteFile(seedFile, seed, 0o600)
	nk := natstest.Server(t, func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: pub}} })
	if nc, err := (&natsFlags{URL: nk.ClientURL(), NKey: seedFile}).connect("t", zap.NewNop()); err != nil {
		t.Errorf("nkey: %v", err)
	} else {
		nc.Close()
	}
	tok := natstest.Server(t, func(o *server.Options) { o.Authorization = "t0ken" })
	if nc, err := (&natsFlags{URL: tok.ClientURL(), Token: "t0ken"}).connect("t", zap.NewNop()); err != nil {
		t.Errorf("token: %v", err)
	} else {
		nc.Close()
	}
	if nc, err := (&natsFlags{URL: tok.ClientURL(), Token: "wrong"}).connect("t", zap.NewNop()); err == nil {
		nc.Close()
		t.Error("wrong token connected")
	}
	for _, f := range []natsFlags{
		{URL: "nats://x", Token: "a", User: "u", Password: "p"},
		{URL: "nats://x", User: "u"},
		{URL: "nats://x", TLSCert: "c.pem"},
		{URL: ""},
	} {
		if _, err := f.options(); err == nil {
			t.Errorf("%+v accepted", f)
		}
	}
}

// TestConnectErrorsRedactSecrets: a malformed or unreachable URL with a password or token in it,
// or a password flag, never appears in the error.
func TestConnectErrorsRedactSecrets(t *testing.T) {
	for _, f := range []natsFlags{
		{URL: "nats://embedder:s3cret-pw@127.0.0.1:1"},           // unreachable
		{URL: "nats://embedder:s3cret-pw@[::1:4222"},             // malformed
		{URL: "nats://s3cret-pw@127.0.0.1:1"},                    // token in the URL
		{URL: "nats://127.0.0.1:1,nats://u:s3cret-pw@h%zz:4222"}, // the second one malformed
		{URL: "nats://127.0.0.1:1", User: "u", Password: "s3cret-pw"},
	} {
		_, err := f.connect("test", zap.NewNop())
		if err == nil {
			t.Fatalf("%s: connected", f.URL)
		}
		if strings.Contains(err.Error(), "s3cret-pw") {
			t.Errorf("error shows the secret: %v", err)
		}
		if !strings.Contains(err.Error(), "[REDACTED]") && f.Password == "" {
			t.Errorf("error does not say where the secret was: %v", err)
		}
	}
}
