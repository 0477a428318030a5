// Package helm_test checks the Helm chart in seqembed/ without a cluster: helm lint and helm
// template for the default values and the value sets below, every rendered object decoded
// strictly (unknown or duplicate fields are errors) into its k8s.io/api type, the ScaledObject,
// ServiceMonitor and PodMonitor validated against the vendored CRD schemas (testdata/crds), and
// the rules the chart promises: terminationGracePeriodSeconds above the shutdown timeout, no
// secret in any container's args or plain env values, selectors that select, probes on the
// worker's telemetry port, the KEDA trigger on the workers' durable consumer.
//
// It needs the helm binary: $HELM, else <repo>/.cache/bin/helm (make chart installs it), else
// helm on $PATH; without one it skips, unless $HELM names one that is missing.
package helm_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	sjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

const (
	chartDir    = "seqembed"
	releaseName = "seqembed"
	namespace   = "seqembed"
	// kubeVersion is what helm renders for (a go-installed helm has no compiled-in default).
	kubeVersion = "1.33.0"
)

// valueSet is one set of values the chart is rendered with, and what the test expects of it.
type valueSet struct {
	name  string
	files []string // value files, relative to this directory
	model string   // model.name
	gpus  int      // nvidia.com/gpu per pod
	keda  bool     // a ScaledObject is rendered
	// replicas is the expected --replicas (stream replicas).
	replicas int
	// triggers is the number of ScaledObject triggers (nats-jetstream, and prometheus if 2).
	triggers int
	// secrets are secret strings the value files carry (also checked when no Secret renders them).
	secrets []string
}

var valueSets = []valueSet{
	{name: "default", model: "esm2-650m", gpus: 1, keda: true, replicas: 3, triggers: 1},
	{name: "one-gpu-per-pod", files: []string{"seqembed/ci/one-gpu-per-pod-values.yaml"}, model: "esm2-t6-8m",
		gpus: 1, keda: true, replicas: 3, triggers: 1, secrets: []string{"s3cr3t-t0ken-for-the-chart-test"}},
	{name: "all-gpus-per-pod", files: []string{"seqembed/values-4gpu.yaml"}, model: "esm2-650m", gpus: 4, keda: true, replicas: 3,
		triggers: 2},
	{name: "cpu-only", files: []string{"seqembed/ci/cpu-only-values.yaml"}, model: "esm2-tiny", gpus: 0, keda: false,
		replicas: 1, secrets: []string{"pa55-w0rd-for-the-chart-test", "seqembed-worker"}},
}

// helmBin finds the helm binary (see the package comment).
func helmBin(t *testing.T) string {
	t.Helper()
	if h := os.Getenv("HELM"); h != "" {
		if _, err := os.Stat(h); err != nil {
			t.Fatalf("HELM=%s: %v (make chart installs helm into .cache/bin)", h, err)
		}
		return h
	}
	if h, err := filepath.Abs("../../.cache/bin/helm"); err == nil {
		if _, err := os.Stat(h); err == nil {
			return h
		}
	}
	if h, err := exec.LookPath("helm"); err == nil {
		return h
	}
	t.Skip("helm not found: run `make chart` (installs helm into .cache/bin) or set HELM")
	return ""
}

// helmError is a failed helm run: its arguments, exit error and output.
type helmError struct {
	args   []string
	err    error
	output string // stdout and stderr
}

func (e *helmError) Error() string {
	return fmt.Sprintf("helm %s: %v\n%s", strings.Join(e.args, " "), e.err, e.output)
}

// helm runs helm with args; it returns stdout, and a *helmError when helm fails.
func helm(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(helmBin(t), args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), &helmError{args: args, err: err, output: stdout.String() + stderr.String()}
	}
	return stdout.Bytes(), nil
}

// valueArgs turns value files and --set pairs into helm flags.
func valueArgs(files []string, sets ...string) []string {
	var args []string
	for _, f := range files {
		args = append(args, "-f", f)
	}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	return args
}

// renderChart runs helm template with the value files and --set pairs.
func renderChart(t *testing.T, files []string, sets ...string) ([]byte, error) {
	t.Helper()
	args := append([]string{"template", releaseName, chartDir, "--namespace", namespace, "--kube-version", kubeVersion},
		valueArgs(files, sets...)...)
	return helm(t, args...)
}

// object is one rendered manifest: its JSON, kind and apiVersion, and the typed object for
// built-in kinds (nil for custom resources).
type object struct {
	apiVersion string
	kind       string
	name       string
	typed      runtime.Object
	raw        map[string]any
}

// builtins is the scheme of the built-in kinds the chart may render; anything else must be a
// custom resource with a vendored CRD.
var builtins = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme, batchv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()

// strictDecoder rejects unknown and duplicate fields (apimachinery's strict decoding).
var strictDecoder = serializer.NewCodecFactory(builtins, serializer.EnableStrict).UniversalDeserializer()

// decodeManifests splits helm's output into documents and decodes each strictly: built-in kinds
// into their k8s.io/api types, custom resources against crds.
func decodeManifests(t *testing.T, out []byte, crds map[crdKey]*crdSchema) []object {
	t.Helper()
	r := k8syaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(out)))
	var objs []object
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("splitting helm output: %v", err)
		}
		j, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			t.Errorf("manifest is not valid YAML (or has a duplicate key): %v\n%s", err, doc)
			continue
		}
		if bytes.Equal(bytes.TrimSpace(j), []byte("null")) {
			continue // comments only
		}
		var o object
		if err := json.Unmarshal(j, &o.raw); err != nil {
			t.Errorf("manifest is not an object: %v\n%s", err, doc)
			continue
		}
		o.apiVersion, _ = o.raw["apiVersion"].(string)
		o.kind, _ = o.raw["kind"].(string)
		if md, ok := o.raw["metadata"].(map[string]any); ok {
			o.name, _ = md["name"].(string)
		}
		id := o.apiVersion + " " + o.kind + " " + o.name
		if s, ok := crds[crdKey{o.apiVersion, o.kind}]; ok {
			problems, cel := validateCR(s, o.raw)
			for _, p := range problems {
				t.Errorf("%s: %s", id, p)
			}
			for _, rule := range cel {
				if !slices.Contains(celRulesCheckedByHand, rule) {
					t.Errorf("%s: the CRD has a CEL rule this test does not check: %s", id, rule)
				}
			}
			meta, err := strictObjectMeta(o.raw)
			if err != nil {
				t.Errorf("%s: metadata: %v", id, err)
			}
			checkMeta(t, id, meta)
		} else {
			typed, gvk, err := strictDecoder.Decode(j, nil, nil)
			if err != nil {
				t.Errorf("%s: strict decoding into k8s.io/api: %v", id, err)
				continue
			}
			if gvk.GroupVersion().String() != o.apiVersion || gvk.Kind != o.kind {
				t.Errorf("%s: decoded as %v", id, gvk)
			}
			o.typed = typed
			if m, err := metaOf(typed); err == nil {
				checkMeta(t, id, *m)
			} else {
				t.Errorf("%s: %v", id, err)
			}
		}
		objs = append(objs, o)
	}
	return objs
}

// strictObjectMeta decodes a custom resource's metadata as the API server would: into
// ObjectMeta, case-sensitively, unknown and duplicate fields being errors.
func strictObjectMeta(raw map[string]any) (metav1.ObjectMeta, error) {
	var m metav1.ObjectMeta
	b, err := json.Marshal(raw["metadata"])
	if err != nil {
		return m, err
	}
	strict, err := sjson.UnmarshalStrict(b, &m)
	if err == nil && len(strict) > 0 {
		err = errors.Join(strict...)
	}
	return m, err
}

func metaOf(o runtime.Object) (*metav1.ObjectMeta, error) {
	switch x := o.(type) {
	case *appsv1.Deployment:
		return &x.ObjectMeta, nil
	case *policyv1.PodDisruptionBudget:
		return &x.ObjectMeta, nil
	case *corev1.Service:
		return &x.ObjectMeta, nil
	case *corev1.ServiceAccount:
		return &x.ObjectMeta, nil
	case *corev1.ConfigMap:
		return &x.ObjectMeta, nil
	case *corev1.Secret:
		return &x.ObjectMeta, nil
	case *batchv1.Job:
		return &x.ObjectMeta, nil
	}
	return nil, fmt.Errorf("kind %T is not expected from this chart", o)
}

// checkMeta checks what the API server would of a name and labels.
func checkMeta(t *testing.T, id string, m metav1.ObjectMeta) {
	t.Helper()
	for _, e := range validation.IsDNS1123Subdomain(m.Name) {
		t.Errorf("%s: name %q: %s", id, m.Name, e)
	}
	if m.Namespace != "" && m.Namespace != namespace {
		t.Errorf("%s: hard-coded namespace %q", id, m.Namespace)
	}
	for _, e := range metav1validation.ValidateLabels(m.Labels, field.NewPath("metadata", "labels")) {
		t.Errorf("%s: %v", id, e)
	}
}

// celRulesCheckedByHand are the CEL rules of the vendored CRDs; checkScaledObject checks them.
var celRulesCheckedByHand = []string{
	"!has(self.minReplicaCount) || self.minReplicaCount <= (has(self.maxReplicaCount) ? self.maxReplicaCount : 100)",
}

func loadTestCRDs(t *testing.T) map[crdKey]*crdSchema {
	t.Helper()
	crds, err := loadCRDs("testdata/crds")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []crdKey{{"keda.sh/v1alpha1", "ScaledObject"}, {"monitoring.coreos.com/v1", "ServiceMonitor"}, {"monitoring.coreos.com/v1", "PodMonitor"}} {
		if crds[k] == nil {
			t.Fatalf("no vendored CRD for %v", k)
		}
	}
	return crds
}

func TestChartLint(t *testing.T) {
	for _, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) {
			args := append([]string{"lint", "--strict", "--kube-version", kubeVersion, chartDir}, valueArgs(vs.files)...)
			if out, err := helm(t, args...); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		})
	}
}

func TestChartRenders(t *testing.T) {
	crds := loadTestCRDs(t)
	for _, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) {
			out, err := renderChart(t, vs.files)
			if err != nil {
				t.Fatal(err)
			}
			objs := decodeManifests(t, out, crds)
			checkObjects(t, vs, objs)
		})
	}
}

// rendered collects the objects of one render by kind.
type rendered struct {
	deployment      *appsv1.Deployment
	job             *batchv1.Job
	pdb             *policyv1.PodDisruptionBudget
	services        []*corev1.Service
	secrets         []*corev1.Secret
	configMaps      []*corev1.ConfigMap
	serviceAccounts []*corev1.ServiceAccount
	scaledObjects   []map[string]any
	serviceMonitors []map[string]any
	podMonitors     []map[string]any
}

func collect(t *testing.T, objs []object) rendered {
	t.Helper()
	var r rendered
	names := map[string]bool{}
	for _, o := range objs {
		id := o.apiVersion + "/" + o.kind + "/" + o.name
		if names[id] {
			t.Errorf("%s rendered twice", id)
		}
		names[id] = true
		switch x := o.typed.(type) {
		case *appsv1.Deployment:
			if r.deployment != nil {
				t.Errorf("more than one Deployment")
			}
			r.deployment = x
		case *batchv1.Job:
			r.job = x
		case *policyv1.PodDisruptionBudget:
			r.pdb = x
		case *corev1.Service:
			r.services = append(r.services, x)
		case *corev1.Secret:
			r.secrets = append(r.secrets, x)
		case *corev1.ConfigMap:
			r.configMaps = append(r.configMaps, x)
		case *corev1.ServiceAccount:
			r.serviceAccounts = append(r.serviceAccounts, x)
		case nil:
			switch o.kind {
			case "ScaledObject":
				r.scaledObjects = append(r.scaledObjects, o.raw)
			case "ServiceMonitor":
				r.serviceMonitors = append(r.serviceMonitors, o.raw)
			case "PodMonitor":
				r.podMonitors = append(r.podMonitors, o.raw)
			default:
				t.Errorf("unexpected custom resource %s", id)
			}
		}
	}
	if r.deployment == nil {
		t.Fatal("no Deployment rendered")
	}
	return r
}

// flagValue returns the value of --name=value in args, and whether it is there.
func flagValue(args []string, name string) (string, bool) {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

func checkObjects(t *testing.T, vs valueSet, objs []object) {
	r := collect(t, objs)
	d := r.deployment
	pod := d.Spec.Template.Spec
	podLabels := labels.Set(d.Spec.Template.Labels)

	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || !sel.Matches(podLabels) {
		t.Errorf("Deployment selector %v does not select its pods' labels %v (%v)", d.Spec.Selector, podLabels, err)
	}
	if len(pod.Containers) != 1 || pod.Containers[0].Name != "worker" {
		t.Fatalf("want one container named worker, got %d", len(pod.Containers))
	}
	worker := pod.Containers[0]
	if len(worker.Args) == 0 || worker.Args[0] != "worker" {
		t.Fatalf("worker args %v do not start with the worker command", worker.Args)
	}

	// Shutdown: the kubelet's grace period covers the worker's own --shutdown-timeout.
	st, ok := flagValue(worker.Args, "shutdown-timeout")
	if !ok {
		t.Fatal("no --shutdown-timeout in the worker's args")
	}
	timeout, err := time.ParseDuration(st)
	if err != nil {
		t.Fatalf("--shutdown-timeout=%s: %v", st, err)
	}
	if pod.TerminationGracePeriodSeconds == nil {
		t.Fatal("no terminationGracePeriodSeconds")
	}
	grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
	if grace <= timeout {
		t.Errorf("terminationGracePeriodSeconds %s does not exceed --shutdown-timeout %s", grace, timeout)
	}
	for _, e := range worker.Env {
		if e.Name == "SEQEMBED_SHUTDOWN_TIMEOUT" {
			t.Errorf("SEQEMBED_SHUTDOWN_TIMEOUT in the env: the grace period is derived from --shutdown-timeout")
		}
	}

	// Model, device, GPUs, stream replicas.
	model, _ := flagValue(worker.Args, "model")
	if filepath.Base(model) != vs.model {
		t.Errorf("--model=%s, want a directory named %s", model, vs.model)
	}
	device, _ := flagValue(worker.Args, "device")
	gpuLimit := worker.Resources.Limits[corev1.ResourceName("nvidia.com/gpu")]
	gpuRequest := worker.Resources.Requests[corev1.ResourceName("nvidia.com/gpu")]
	if vs.gpus > 0 {
		if device != "cuda:all" {
			t.Errorf("--device=%s, want cuda:all (every GPU of the pod)", device)
		}
		if gpuLimit.Value() != int64(vs.gpus) || gpuRequest.Value() != int64(vs.gpus) {
			t.Errorf("nvidia.com/gpu limit %s request %s, want %d", gpuLimit.String(), gpuRequest.String(), vs.gpus)
		}
		if !slices.ContainsFunc(pod.Tolerations, func(t corev1.Toleration) bool { return t.Key == "nvidia.com/gpu" }) {
			t.Errorf("GPU pod without a nvidia.com/gpu toleration")
		}
	} else {
		if device != "cpu" {
			t.Errorf("--device=%s, want cpu", device)
		}
		if !gpuLimit.IsZero() || !gpuRequest.IsZero() {
			t.Errorf("CPU-only pod requests GPUs: %v", worker.Resources)
		}
	}
	if rep, _ := flagValue(worker.Args, "replicas"); rep != strconv.Itoa(vs.replicas) {
		t.Errorf("--replicas=%s, want %d", rep, vs.replicas)
	}

	// Probes on the telemetry port: liveness /healthz, readiness /readyz.
	addr, _ := flagValue(worker.Args, "http-addr")
	port, err := strconv.Atoi(strings.TrimPrefix(addr, ":"))
	if err != nil {
		t.Fatalf("--http-addr=%s: want :PORT", addr)
	}
	portName := ""
	for _, p := range worker.Ports {
		if int(p.ContainerPort) == port {
			portName = p.Name
		}
		for _, e := range validation.IsValidPortName(p.Name) {
			t.Errorf("container port name %q: %s", p.Name, e)
		}
	}
	if portName == "" {
		t.Fatalf("no container port %d (--http-addr)", port)
	}
	for _, pr := range []struct {
		probe *corev1.Probe
		path  string
	}{{worker.LivenessProbe, "/healthz"}, {worker.ReadinessProbe, "/readyz"}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil || pr.probe.HTTPGet.Path != pr.path ||
			(pr.probe.HTTPGet.Port.String() != portName && pr.probe.HTTPGet.Port.IntValue() != port) {
			t.Errorf("want an HTTP probe of %s on port %s (%d), got %+v", pr.path, portName, port, pr.probe)
		}
	}

	checkSecurity(t, pod)
	checkVolumes(t, "Deployment", pod)
	checkSecrets(t, vs, r)

	// The streams Job sets the streams up exactly as the workers would.
	if r.job != nil {
		jp := r.job.Spec.Template.Spec
		checkSecurity(t, jp)
		checkVolumes(t, "Job", jp)
		if len(jp.Containers) != 1 || len(jp.Containers[0].Args) == 0 || jp.Containers[0].Args[0] != "streams" {
			t.Fatalf("streams Job does not run `seqembed streams`: %+v", jp.Containers)
		}
		ja := jp.Containers[0].Args
		if name, _ := flagValue(ja, "name"); name != vs.model {
			t.Errorf("streams --name=%s, want %s", name, vs.model)
		}
		for _, f := range []string{"nats", "in-stream", "out-stream", "replicas", "ack-wait", "max-ack-pending", "max-deliver"} {
			wv, wok := flagValue(worker.Args, f)
			jv, jok := flagValue(ja, f)
			if !wok || !jok || wv != jv {
				t.Errorf("--%s: worker %q, streams Job %q: they must agree", f, wv, jv)
			}
		}
		if sel, _ := metav1.LabelSelectorAsSelector(d.Spec.Selector); sel.Matches(labels.Set(r.job.Spec.Template.Labels)) {
			t.Errorf("the Deployment's selector selects the streams Job's pods")
		}
	}

	if r.pdb == nil {
		t.Error("no PodDisruptionBudget")
	} else if s, err := metav1.LabelSelectorAsSelector(r.pdb.Spec.Selector); err != nil || !s.Matches(podLabels) {
		t.Errorf("PodDisruptionBudget selector %v does not select the workers (%v)", r.pdb.Spec.Selector, err)
	}
	if pod.ServiceAccountName != "" && pod.ServiceAccountName != "default" {
		if !slices.ContainsFunc(r.serviceAccounts, func(sa *corev1.ServiceAccount) bool { return sa.Name == pod.ServiceAccountName }) {
			t.Errorf("pods use ServiceAccount %s, which is not rendered", pod.ServiceAccountName)
		}
	}
	for _, s := range r.services {
		if !labels.SelectorFromSet(s.Spec.Selector).Matches(podLabels) {
			t.Errorf("Service %s selector %v does not select the workers", s.Name, s.Spec.Selector)
		}
		for _, p := range s.Spec.Ports {
			if p.TargetPort.String() != portName && p.TargetPort.IntValue() != port {
				t.Errorf("Service %s port %s targets %s, not the worker's %s", s.Name, p.Name, p.TargetPort.String(), portName)
			}
		}
	}
	for _, sm := range r.serviceMonitors {
		checkServiceMonitor(t, sm, r.services)
	}
	for _, pm := range r.podMonitors {
		checkPodMonitor(t, pm, podLabels, portName)
	}
	for _, cm := range r.configMaps {
		checkDashboard(t, cm)
	}

	if !vs.keda {
		if len(r.scaledObjects) != 0 {
			t.Errorf("ScaledObject rendered with autoscaling off")
		}
		if d.Spec.Replicas == nil {
			t.Errorf("no replicas with autoscaling off")
		}
		return
	}
	if len(r.scaledObjects) != 1 {
		t.Fatalf("%d ScaledObjects, want 1", len(r.scaledObjects))
	}
	if d.Spec.Replicas != nil {
		t.Errorf("Deployment sets replicas (%d) while KEDA owns them: every upgrade would reset the scale", *d.Spec.Replicas)
	}
	inStream, _ := flagValue(worker.Args, "in-stream")
	checkScaledObject(t, r.scaledObjects[0], d.Name, vs.model, inStream)
	if n := len(path(r.scaledObjects[0], "spec", "triggers").([]any)); n != vs.triggers {
		t.Errorf("%d triggers, want %d", n, vs.triggers)
	}
}

// checkSecurity: non-root, no privilege escalation, read-only root filesystem, /tmp writable.
func checkSecurity(t *testing.T, pod corev1.PodSpec) {
	t.Helper()
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("pod security context does not run as a non-root user: %+v", psc)
	}
	for _, c := range append(slices.Clone(pod.InitContainers), pod.Containers...) {
		sc := c.SecurityContext
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("container %s: root filesystem not read-only", c.Name)
		}
		if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("container %s: allowPrivilegeEscalation not false", c.Name)
		}
		if sc == nil || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			t.Errorf("container %s: capabilities not dropped", c.Name)
		}
		if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/tmp" }) {
			t.Errorf("container %s: no writable /tmp", c.Name)
		}
	}
	for _, v := range pod.Volumes {
		if v.Name == "tmp" && v.EmptyDir == nil {
			t.Errorf("volume tmp is not an emptyDir")
		}
	}
}

// checkVolumes: every mount names a volume; every file an env var points at is a key of a
// mounted Secret.
func checkVolumes(t *testing.T, what string, pod corev1.PodSpec) {
	t.Helper()
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
	}
	for _, c := range append(slices.Clone(pod.InitContainers), pod.Containers...) {
		files := map[string]bool{}
		for _, m := range c.VolumeMounts {
			v, ok := vols[m.Name]
			if !ok {
				t.Errorf("%s container %s mounts %s, which is no volume", what, c.Name, m.Name)
				continue
			}
			if v.Secret != nil {
				for _, it := range v.Secret.Items {
					files[m.MountPath+"/"+it.Path] = true
				}
			}
		}
		for _, e := range c.Env {
			switch e.Name {
			case "SEQEMBED_CREDS", "SEQEMBED_NKEY", "SEQEMBED_TLS_CA", "SEQEMBED_TLS_CERT", "SEQEMBED_TLS_KEY":
				if !files[e.Value] {
					t.Errorf("%s container %s: %s=%s is not a file of a mounted Secret (%v)", what, c.Name, e.Name, e.Value, files)
				}
			}
		}
	}
}

// checkSecrets: no secret value in any container's command, args or plain env value, nor in a
// ConfigMap; the secret settings come from Secrets that exist.
func checkSecrets(t *testing.T, vs valueSet, r rendered) {
	t.Helper()
	secrets := slices.Clone(vs.secrets)
	keys := map[string]map[string]bool{} // rendered Secret → its keys
	for _, s := range r.secrets {
		keys[s.Name] = map[string]bool{}
		for k, v := range s.StringData {
			secrets = append(secrets, v)
			keys[s.Name][k] = true
		}
		for k, v := range s.Data {
			secrets = append(secrets, string(v))
			keys[s.Name][k] = true
		}
	}
	// Secrets the pods reference and the chart does not render must be the user's existing ones.
	var pods []corev1.PodSpec
	pods = append(pods, r.deployment.Spec.Template.Spec)
	if r.job != nil {
		pods = append(pods, r.job.Spec.Template.Spec)
	}
	for _, pod := range pods {
		for _, c := range append(slices.Clone(pod.InitContainers), pod.Containers...) {
			plain := append(slices.Clone(c.Command), c.Args...)
			for _, a := range c.Args {
				for _, f := range []string{"--password", "--token", "-password", "-token"} {
					if a == f || strings.HasPrefix(a, f+"=") {
						t.Errorf("container %s: secret flag %s on the command line", c.Name, f)
					}
				}
				if v, ok := strings.CutPrefix(a, "--nats="); ok && strings.Contains(v, "@") {
					t.Errorf("container %s: credentials in the NATS URL %s", c.Name, v)
				}
			}
			for _, e := range c.Env {
				if e.Value != "" {
					plain = append(plain, e.Value)
				}
				switch e.Name {
				case "SEQEMBED_PASSWORD", "SEQEMBED_TOKEN", "SEQEMBED_USER":
					ref := (*corev1.SecretKeySelector)(nil)
					if e.ValueFrom != nil {
						ref = e.ValueFrom.SecretKeyRef
					}
					if ref == nil {
						t.Errorf("container %s: %s not from a Secret", c.Name, e.Name)
						continue
					}
					if k, ok := keys[ref.Name]; ok && !k[ref.Key] {
						t.Errorf("container %s: %s refers to key %s, which Secret %s does not have", c.Name, e.Name, ref.Key, ref.Name)
					}
				}
			}
			for _, s := range secrets {
				for _, p := range plain {
					if s != "" && strings.Contains(p, s) {
						t.Errorf("container %s: a secret value appears in its args or plain env (%q)", c.Name, p)
					}
				}
			}
		}
	}
	for _, cm := range r.configMaps {
		for k, v := range cm.Data {
			for _, s := range secrets {
				if s != "" && strings.Contains(v, s) {
					t.Errorf("ConfigMap %s key %s holds a secret value", cm.Name, k)
				}
			}
		}
	}
}

// path returns the value at keys in nested maps (nil where absent).
func path(m any, keys ...string) any {
	for _, k := range keys {
		mm, ok := m.(map[string]any)
		if !ok {
			return nil
		}
		m = mm[k]
	}
	return m
}

// scalerParams are the trigger metadata each KEDA scaler the chart uses reads (KEDA v2.20:
// natsJetStreamMetadata in pkg/scalers/nats_jetstream_scaler.go, prometheusMetadata in
// pkg/scalers/prometheus_scaler.go, minus authentication); the CRD types trigger metadata only
// as map[string]string, so this is the check of its keys.
var scalerParams = map[string][]string{
	"nats-jetstream": {"natsServerMonitoringEndpoint", "account", "accountID", "stream", "consumer",
		"lagThreshold", "activationLagThreshold", "useHttps"},
	"prometheus": {"serverAddress", "query", "queryParameters", "threshold", "activationThreshold", "namespace",
		"customHeaders", "ignoreNullValues", "unsafeSsl", "timeout"},
}

func checkScaledObject(t *testing.T, so map[string]any, deployment, model, inStream string) {
	t.Helper()
	if path(so, "spec", "scaleTargetRef", "name") != deployment {
		t.Errorf("ScaledObject targets %v, want Deployment %s", path(so, "spec", "scaleTargetRef"), deployment)
	}
	if k := path(so, "spec", "scaleTargetRef", "kind"); k != nil && k != "Deployment" {
		t.Errorf("ScaledObject targets kind %v", k)
	}
	// The CRD's CEL rule: minReplicaCount ≤ maxReplicaCount (100 when unset).
	minR, hasMin := path(so, "spec", "minReplicaCount").(float64)
	maxR, hasMax := path(so, "spec", "maxReplicaCount").(float64)
	if !hasMax {
		maxR = 100
	}
	if hasMin && minR > maxR {
		t.Errorf("minReplicaCount %v > maxReplicaCount %v", minR, maxR)
	}
	// KEDA's admission webhook: idleReplicaCount (only 0 is supported) below minReplicaCount.
	if idle, ok := path(so, "spec", "idleReplicaCount").(float64); ok && (idle != 0 || !hasMin || minR <= idle) {
		t.Errorf("idleReplicaCount %v must be 0 and below minReplicaCount %v", idle, minR)
	}
	triggers, _ := path(so, "spec", "triggers").([]any)
	seen := map[string]int{}
	for i, tr := range triggers {
		typ, _ := path(tr, "type").(string)
		seen[typ]++
		md, _ := path(tr, "metadata").(map[string]any)
		params, ok := scalerParams[typ]
		if !ok {
			t.Errorf("trigger %d: type %q is no scaler this test knows", i, typ)
			continue
		}
		for k := range md {
			if !slices.Contains(params, k) {
				t.Errorf("trigger %d: metadata %s is no parameter of the %s scaler", i, k, typ)
			}
		}
		integer := func(k string, min int64, required bool) {
			v, ok := md[k]
			if !ok {
				if required {
					t.Errorf("trigger %d (%s): metadata %s missing", i, typ, k)
				}
				return
			}
			if n, err := strconv.ParseInt(fmt.Sprint(v), 10, 64); err != nil || n < min {
				t.Errorf("trigger %d (%s): %s %v: want an integer ≥ %d", i, typ, k, v, min)
			}
		}
		boolean := func(k string) {
			if v, ok := md[k]; ok {
				if _, err := strconv.ParseBool(fmt.Sprint(v)); err != nil {
					t.Errorf("trigger %d (%s): %s %v: want true or false", i, typ, k, v)
				}
			}
		}
		switch typ {
		case "nats-jetstream":
			for _, k := range []string{"natsServerMonitoringEndpoint", "stream", "consumer"} {
				if s, _ := md[k].(string); s == "" {
					t.Errorf("trigger %d: metadata %s missing", i, k)
				}
			}
			if md["account"] == nil && md["accountID"] == nil {
				t.Errorf("trigger %d: needs account or accountID", i)
			}
			if md["consumer"] != "seqembed-"+model || md["stream"] != inStream {
				t.Errorf("trigger on stream %v consumer %v, want the workers' %s / seqembed-%s", md["stream"], md["consumer"], inStream, model)
			}
			integer("lagThreshold", 1, true)
			integer("activationLagThreshold", 0, false)
			boolean("useHttps")
			if ep, _ := md["natsServerMonitoringEndpoint"].(string); strings.Contains(ep, "://") || !strings.Contains(ep, ":") {
				t.Errorf("natsServerMonitoringEndpoint %q: want host:port (the scaler adds the scheme)", ep)
			}
		case "prometheus":
			if q, _ := md["query"].(string); !strings.Contains(q, "seqembed_backlog_records") || !strings.Contains(q, strconv.Quote(model)) {
				t.Errorf("prometheus trigger query %q: want seqembed_backlog_records of model %s", q, model)
			}
			if a, _ := md["serverAddress"].(string); !strings.HasPrefix(a, "http") {
				t.Errorf("prometheus trigger serverAddress %q: want an http(s) URL", a)
			}
			integer("threshold", 1, true)
			integer("activationThreshold", 0, false)
			boolean("ignoreNullValues")
		}
	}
	// The backlog trigger that works from zero pods is always there.
	if seen["nats-jetstream"] != 1 || len(triggers) > 2 {
		t.Errorf("triggers %v: want one nats-jetstream (and at most one prometheus)", seen)
	}
}

func checkServiceMonitor(t *testing.T, sm map[string]any, services []*corev1.Service) {
	t.Helper()
	var sel metav1.LabelSelector
	b, _ := json.Marshal(path(sm, "spec", "selector"))
	if err := json.Unmarshal(b, &sel); err != nil {
		t.Fatalf("ServiceMonitor selector: %v", err)
	}
	s, err := metav1.LabelSelectorAsSelector(&sel)
	if err != nil {
		t.Fatal(err)
	}
	endpoints, _ := path(sm, "spec", "endpoints").([]any)
	matched := false
	for _, svc := range services {
		if !s.Matches(labels.Set(svc.Labels)) {
			continue
		}
		matched = true
		for _, ep := range endpoints {
			if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == path(ep, "port") }) {
				t.Errorf("ServiceMonitor endpoint port %v is no port of Service %s", path(ep, "port"), svc.Name)
			}
		}
	}
	if !matched || len(endpoints) == 0 {
		t.Errorf("ServiceMonitor selects no Service of the chart (or has no endpoints)")
	}
}

func checkPodMonitor(t *testing.T, pm map[string]any, podLabels labels.Set, portName string) {
	t.Helper()
	var sel metav1.LabelSelector
	b, _ := json.Marshal(path(pm, "spec", "selector"))
	if err := json.Unmarshal(b, &sel); err != nil {
		t.Fatalf("PodMonitor selector: %v", err)
	}
	if s, err := metav1.LabelSelectorAsSelector(&sel); err != nil || !s.Matches(podLabels) {
		t.Errorf("PodMonitor selector does not select the workers (%v)", err)
	}
	eps, _ := path(pm, "spec", "podMetricsEndpoints").([]any)
	if len(eps) == 0 {
		t.Errorf("PodMonitor without podMetricsEndpoints")
	}
	for _, ep := range eps {
		if path(ep, "port") != portName {
			t.Errorf("PodMonitor port %v, want the worker's %s", path(ep, "port"), portName)
		}
	}
}

// checkDashboard: the dashboard ConfigMap carries deploy/grafana/dashboards/seqembed.json as is.
func checkDashboard(t *testing.T, cm *corev1.ConfigMap) {
	t.Helper()
	want, err := os.ReadFile("../grafana/dashboards/seqembed.json")
	if err != nil {
		t.Fatal(err)
	}
	got, ok := cm.Data["seqembed.json"]
	if !ok {
		t.Fatalf("ConfigMap %s has no seqembed.json", cm.Name)
	}
	if strings.TrimSpace(got) != strings.TrimSpace(string(want)) {
		t.Errorf("ConfigMap %s: dashboard differs from deploy/grafana/dashboards/seqembed.json", cm.Name)
	}
	var d struct {
		UID string `json:"uid"`
	}
	if err := json.Unmarshal([]byte(got), &d); err != nil || d.UID == "" {
		t.Errorf("ConfigMap %s: dashboard is not JSON with a uid (%v)", cm.Name, err)
	}
}

// TestChartAllTemplates renders with everything optional switched on at once, so every template
// is strictly decoded at least once in one release.
func TestChartAllTemplates(t *testing.T) {
	crds := loadTestCRDs(t)
	out, err := renderChart(t, []string{"seqembed/ci/one-gpu-per-pod-values.yaml"},
		"metrics.podMonitor.enabled=true", "grafanaDashboard.enabled=true")
	if err != nil {
		t.Fatal(err)
	}
	objs := decodeManifests(t, out, crds)
	kinds := map[string]bool{}
	for _, o := range objs {
		kinds[o.kind] = true
	}
	for _, k := range []string{"Deployment", "PodDisruptionBudget", "ServiceAccount", "Service", "Secret", "ConfigMap",
		"Job", "ScaledObject", "ServiceMonitor", "PodMonitor"} {
		if !kinds[k] {
			t.Errorf("no %s rendered", k)
		}
	}
	vs := valueSets[1]
	checkObjects(t, vs, objs)
}

// TestChartRefuses: settings that would leak a secret or cannot work fail the render.
func TestChartRefuses(t *testing.T) {
	for _, c := range []struct {
		name string
		sets []string
		want string
	}{
		{"password in args", []string{"worker.extraArgs[0]=--password=hunter2"}, "secret on the command line"},
		{"token in args", []string{"worker.extraArgs[0]=--token", "worker.extraArgs[1]=abc"}, "secret on the command line"},
		{"plain token env", []string{"worker.env[0].name=SEQEMBED_TOKEN", "worker.env[0].value=abc"}, "plain value"},
		{"credentials in URL", []string{"nats.url=nats://u:p@nats:4222"}, "must not carry credentials"},
		{"shutdown env", []string{"worker.env[0].name=SEQEMBED_SHUTDOWN_TIMEOUT", "worker.env[0].value=99s"}, "shutdownTimeoutSeconds"},
		{"shutdown flag", []string{"worker.extraArgs[0]=--shutdown-timeout=99s"}, "set by the chart"},
		{"no grace margin", []string{"worker.shutdownGraceMarginSeconds=0"}, "/worker/shutdownGraceMarginSeconds"},
		{"min over max", []string{"autoscaling.minReplicas=9", "autoscaling.maxReplicas=2"}, "minReplicas 9 > maxReplicas 2"},
		{"min zero", []string{"autoscaling.minReplicas=0"}, "/autoscaling/minReplicas"},
		{"pvc without claim", []string{"model.pvc.claimName="}, "claimName"},
		{"auth without secret", []string{"nats.auth.method=token"}, "existingSecret"},
		{"created secret without value", []string{"nats.auth.method=token", "nats.auth.create=true"}, "nats.auth.values.token"},
		{"tls without secret", []string{"nats.tls.enabled=true"}, "nats.tls.existingSecret"},
		{"bad model name", []string{"model.name=esm2.650m"}, "/model/name"},
		{"misspelt key", []string{"autoscalling.enabled=false"}, "'autoscalling' not allowed"},
		{"misspelt nested key", []string{"gpu.cont=2"}, "'cont' not allowed"},
		{"unknown auth method", []string{"nats.auth.method=jwt"}, "/nats/auth/method"},
		{"cuda without GPUs", []string{"gpu.count=0", "gpu.device=cuda:0"}, "no GPU"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := renderChart(t, nil, c.sets...)
			var he *helmError
			if !errors.As(err, &he) {
				t.Fatalf("rendered with %v (%v)", c.sets, err)
			}
			if !strings.Contains(he.output, c.want) {
				t.Errorf("helm's message does not say %q:\n%v", c.want, err)
			}
		})
	}
}

// TestChartShutdownGrace: the grace period follows worker.shutdownTimeoutSeconds.
func TestChartShutdownGrace(t *testing.T) {
	crds := loadTestCRDs(t)
	for _, s := range []int{1, 30, 120} {
		out, err := renderChart(t, nil, fmt.Sprintf("worker.shutdownTimeoutSeconds=%d", s))
		if err != nil {
			t.Fatal(err)
		}
		r := collect(t, decodeManifests(t, out, crds))
		pod := r.deployment.Spec.Template.Spec
		if got, _ := flagValue(pod.Containers[0].Args, "shutdown-timeout"); got != fmt.Sprintf("%ds", s) {
			t.Errorf("--shutdown-timeout=%s, want %ds", got, s)
		}
		if g := *pod.TerminationGracePeriodSeconds; g <= int64(s) {
			t.Errorf("shutdown timeout %ds: terminationGracePeriodSeconds %d", s, g)
		}
	}
}

// TestNATSServerPinned: docker-compose.yml, the official NATS chart's values and our chart name
// the nats-server release go.mod requires (the one the tests run against).
func TestNATSServerPinned(t *testing.T) {
	gomod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*github\.com/nats-io/nats-server/v2 v(\d+\.\d+\.\d+)\s*$`).FindSubmatch(gomod)
	if m == nil {
		t.Fatal("go.mod does not require github.com/nats-io/nats-server/v2")
	}
	want := string(m[1])

	var compose struct {
		Services map[string]struct {
			Image   string   `json:"image"`
			Command []string `json:"command"`
		} `json:"services"`
	}
	b, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &compose); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	natsServers := 0
	for name, s := range compose.Services {
		if repo, tag, _ := strings.Cut(s.Image, ":"); repo == "nats" {
			natsServers++
			if tag != want {
				t.Errorf("docker-compose.yml service %s runs %s, want nats:%s (go.mod)", name, s.Image, want)
			}
		}
		if len(s.Command) > 0 && s.Command[0] == "worker" {
			if i := slices.Index(s.Command, "--replicas"); i < 0 || i+1 >= len(s.Command) || s.Command[i+1] != "3" {
				t.Errorf("docker-compose.yml worker %s: want --replicas 3 (a 3-server cluster), command %v", name, s.Command)
			}
		}
	}
	if natsServers != 3 {
		t.Errorf("docker-compose.yml has %d NATS servers, want 3", natsServers)
	}

	var nv struct {
		Container struct {
			Image struct {
				Tag string `json:"tag"`
			} `json:"image"`
		} `json:"container"`
		Config struct {
			Cluster struct {
				Enabled  bool `json:"enabled"`
				Replicas int  `json:"replicas"`
			} `json:"cluster"`
			Jetstream struct {
				Enabled bool `json:"enabled"`
			} `json:"jetstream"`
		} `json:"config"`
	}
	b, err = os.ReadFile("nats-values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &nv); err != nil {
		t.Fatalf("nats-values.yaml: %v", err)
	}
	if v, _, _ := strings.Cut(nv.Container.Image.Tag, "-"); v != want {
		t.Errorf("nats-values.yaml image tag %s, want %s (go.mod)", nv.Container.Image.Tag, want)
	}
	if !nv.Config.Cluster.Enabled || nv.Config.Cluster.Replicas < 3 || !nv.Config.Jetstream.Enabled {
		t.Errorf("nats-values.yaml: want a cluster of ≥ 3 servers with JetStream, got %+v", nv.Config)
	}

	var chart struct {
		Annotations map[string]string `json:"annotations"`
	}
	b, err = os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &chart); err != nil {
		t.Fatal(err)
	}
	if got := chart.Annotations["seqembed.io/nats-server"]; got != want {
		t.Errorf("Chart.yaml annotation seqembed.io/nats-server %q, want %s (go.mod)", got, want)
	}
}
