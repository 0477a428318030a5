package helm_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

// A small validator for custom resources against the openAPIV3Schema of their vendored
// CustomResourceDefinition (testdata/crds), with the API server's structural-schema rules:
// a field the schema does not declare is an error (the server would prune it silently), as are
// a wrong type, a missing required field, a value outside enum, pattern, length or range. It
// knows the keywords the vendored CRDs use (see crdSchema); CEL rules (x-kubernetes-validations)
// are not evaluated but returned, so the caller checks them by hand and notices new ones.

// crdSchema is the subset of JSONSchemaProps that the vendored CRDs use. Keywords that do not
// constrain a value (description, default, x-kubernetes-list-type, x-kubernetes-map-type, ...)
// are not decoded.
type crdSchema struct {
	Type                 string                `json:"type"`
	Format               string                `json:"format"`
	Properties           map[string]*crdSchema `json:"properties"`
	AdditionalProperties *schemaOrBool         `json:"additionalProperties"`
	Items                *crdSchema            `json:"items"`
	Required             []string              `json:"required"`
	Enum                 []any                 `json:"enum"`
	Pattern              string                `json:"pattern"`
	MinLength            *int64                `json:"minLength"`
	MaxLength            *int64                `json:"maxLength"`
	MinItems             *int64                `json:"minItems"`
	MaxItems             *int64                `json:"maxItems"`
	Minimum              *float64              `json:"minimum"`
	Maximum              *float64              `json:"maximum"`
	AnyOf                []*crdSchema          `json:"anyOf"`
	Nullable             bool                  `json:"nullable"`
	IntOrString          bool                  `json:"x-kubernetes-int-or-string"`
	PreserveUnknown      bool                  `json:"x-kubernetes-preserve-unknown-fields"`
	Validations          []struct {
		Rule    string `json:"rule"`
		Message string `json:"message"`
	} `json:"x-kubernetes-validations"`
}

// schemaOrBool is additionalProperties: a schema for every other key, or true/false.
type schemaOrBool struct {
	Allows bool
	Schema *crdSchema
}

func (s *schemaOrBool) UnmarshalJSON(b []byte) error {
	if bytes.Equal(b, []byte("true")) || bytes.Equal(b, []byte("false")) {
		s.Allows = string(b) == "true"
		return nil
	}
	s.Allows = true
	return json.Unmarshal(b, &s.Schema)
}

// crdKey names a served version of a custom resource: apiVersion (group/version) and kind.
type crdKey struct{ APIVersion, Kind string }

// loadCRDs reads every CRD file in dir and returns the schema of each served version.
func loadCRDs(dir string) (map[crdKey]*crdSchema, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("no CRDs in %s (%v)", dir, err)
	}
	out := map[crdKey]*crdSchema{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var crd struct {
			Kind string `json:"kind"`
			Spec struct {
				Group string `json:"group"`
				Names struct {
					Kind string `json:"kind"`
				} `json:"names"`
				Versions []struct {
					Name   string `json:"name"`
					Served bool   `json:"served"`
					Schema struct {
						OpenAPIV3Schema *crdSchema `json:"openAPIV3Schema"`
					} `json:"schema"`
				} `json:"versions"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal(b, &crd); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		if crd.Kind != "CustomResourceDefinition" {
			return nil, fmt.Errorf("%s: kind %q, want CustomResourceDefinition", f, crd.Kind)
		}
		for _, v := range crd.Spec.Versions {
			if v.Served && v.Schema.OpenAPIV3Schema != nil {
				out[crdKey{crd.Spec.Group + "/" + v.Name, crd.Spec.Names.Kind}] = v.Schema.OpenAPIV3Schema
			}
		}
	}
	return out, nil
}

// validateCR checks the custom resource obj (decoded JSON) against its CRD's schema. The root's
// metadata is left to the caller (the API server validates it as ObjectMeta, not by the schema).
// It returns the problems found and the CEL rules it met but did not evaluate.
func validateCR(s *crdSchema, obj map[string]any) (problems, celRules []string) {
	v := &schemaValidator{}
	root := map[string]any{}
	for k, x := range obj {
		if k != "metadata" {
			root[k] = x
		}
	}
	if _, ok := obj["metadata"].(map[string]any); !ok {
		v.errorf("", "metadata missing or not an object")
	}
	v.validate("", s, root)
	sort.Strings(v.problems)
	return v.problems, v.cel
}

type schemaValidator struct {
	problems []string
	cel      []string
}

func (v *schemaValidator) errorf(path, format string, args ...any) {
	if path == "" {
		path = "."
	}
	v.problems = append(v.problems, path+": "+fmt.Sprintf(format, args...))
}

func (v *schemaValidator) validate(path string, s *crdSchema, x any) {
	for _, r := range s.Validations {
		v.cel = append(v.cel, r.Rule)
	}
	if x == nil {
		if !s.Nullable {
			v.errorf(path, "null value")
		}
		return
	}
	if s.IntOrString {
		switch n := x.(type) {
		case string:
		case float64:
			if n != math.Trunc(n) {
				v.errorf(path, "want an integer or a string, got %v", n)
			}
		default:
			v.errorf(path, "want an integer or a string, got %T", x)
		}
		return
	}
	if len(s.AnyOf) > 0 {
		ok := false
		for _, alt := range s.AnyOf {
			sub := &schemaValidator{}
			sub.validate(path, alt, x)
			ok = ok || len(sub.problems) == 0
		}
		if !ok {
			v.errorf(path, "value %v matches none of anyOf", x)
		}
	}
	if len(s.Enum) > 0 {
		found := false
		for _, e := range s.Enum {
			found = found || fmt.Sprint(e) == fmt.Sprint(x)
		}
		if !found {
			v.errorf(path, "value %v not in enum %v", x, s.Enum)
		}
	}
	switch s.Type {
	case "object":
		m, ok := x.(map[string]any)
		if !ok {
			v.errorf(path, "want an object, got %T", x)
			return
		}
		v.object(path, s, m)
	case "array":
		a, ok := x.([]any)
		if !ok {
			v.errorf(path, "want an array, got %T", x)
			return
		}
		if s.MinItems != nil && int64(len(a)) < *s.MinItems {
			v.errorf(path, "%d items, want at least %d", len(a), *s.MinItems)
		}
		if s.MaxItems != nil && int64(len(a)) > *s.MaxItems {
			v.errorf(path, "%d items, want at most %d", len(a), *s.MaxItems)
		}
		if s.Items != nil {
			for i, e := range a {
				v.validate(fmt.Sprintf("%s[%d]", path, i), s.Items, e)
			}
		}
	case "string":
		str, ok := x.(string)
		if !ok {
			v.errorf(path, "want a string, got %T (%v)", x, x)
			return
		}
		if s.MinLength != nil && int64(len(str)) < *s.MinLength {
			v.errorf(path, "%q shorter than %d", str, *s.MinLength)
		}
		if s.MaxLength != nil && int64(len(str)) > *s.MaxLength {
			v.errorf(path, "%q longer than %d", str, *s.MaxLength)
		}
		if s.Pattern != "" {
			re, err := regexp.Compile(s.Pattern)
			switch {
			case err != nil:
				v.errorf(path, "schema pattern %q does not compile in Go: %v", s.Pattern, err)
			case !re.MatchString(str):
				v.errorf(path, "%q does not match %q", str, s.Pattern)
			}
		}
	case "integer", "number":
		n, ok := x.(float64)
		if !ok {
			v.errorf(path, "want a %s, got %T (%v)", s.Type, x, x)
			return
		}
		if s.Type == "integer" && n != math.Trunc(n) {
			v.errorf(path, "want an integer, got %v", n)
		}
		if s.Format == "int32" && (n < math.MinInt32 || n > math.MaxInt32) {
			v.errorf(path, "%v out of int32 range", n)
		}
		if s.Minimum != nil && n < *s.Minimum {
			v.errorf(path, "%v below minimum %v", n, *s.Minimum)
		}
		if s.Maximum != nil && n > *s.Maximum {
			v.errorf(path, "%v above maximum %v", n, *s.Maximum)
		}
	case "boolean":
		if _, ok := x.(bool); !ok {
			v.errorf(path, "want a boolean, got %T (%v)", x, x)
		}
	case "":
		// No type: only anyOf or int-or-string constrain it (handled above).
	default:
		v.errorf(path, "schema type %q unknown to this validator", s.Type)
	}
}

func (v *schemaValidator) object(path string, s *crdSchema, m map[string]any) {
	for _, r := range s.Required {
		if _, ok := m[r]; !ok {
			v.errorf(path, "required field %q missing", r)
		}
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		sub := path + "." + k
		if ps, ok := s.Properties[k]; ok {
			v.validate(sub, ps, m[k])
			continue
		}
		switch ap := s.AdditionalProperties; {
		case ap != nil && ap.Schema != nil:
			v.validate(sub, ap.Schema, m[k])
		case ap != nil && ap.Allows, s.PreserveUnknown:
		default:
			known := make([]string, 0, len(s.Properties))
			for p := range s.Properties {
				known = append(known, p)
			}
			sort.Strings(known)
			v.errorf(sub, "unknown field (the API server would prune it); known: %s", strings.Join(known, ", "))
		}
	}
}
