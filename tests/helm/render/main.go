// Command render renders a Helm chart's templates the way `helm template` does, for testing
// a chart where no helm binary can be had. It uses Go's text/template with sprig's function
// map and provides the helm built-ins the scopegate chart uses:
//
//	include, tpl, required, fail (sprig), toYaml, fromYaml, toJson, fromJson, lookup (empty,
//	as in `helm template`), .Values, .Release.{Name,Namespace,Service,IsInstall,IsUpgrade,
//	Revision}, .Chart.{Name,Version,AppVersion,...}, .Capabilities.{KubeVersion,APIVersions.Has},
//	.Template.{Name,BasePath}.
//
// Helm's semantics kept on purpose, so that what passes here passes under helm:
//   - values are read as helm reads them (YAML converted to JSON): every number is a float64,
//     so a template must use `int`/`int64` where helm needs one;
//   - values files are merged over values.yaml as helm coalesces them (maps merge
//     recursively, a null deletes the default);
//   - missing keys print as empty (missingkey=zero with "<no value>" removed);
//   - files whose name starts with "_" are partials and not rendered; NOTES.txt is rendered
//     on its own; output that is only whitespace is dropped; every rendered document must be
//     valid YAML with apiVersion and kind;
//   - Chart.yaml's kubeVersion constraint is checked against --kube-version;
//   - env and expandenv are removed from sprig, as helm does.
//
// Not provided (the chart must not use them): .Files, toToml, lookup against a cluster,
// subcharts, hooks. values.schema.json is checked by the driver script (python jsonschema)
// against the merged values this program writes with --dump-values.
//
// Build (Debian's packages only, no network):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o render ./tests/helm/render
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/semver"
	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v2"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// APIVersions mirrors helm's chartutil.VersionSet.
type APIVersions []string

// Has reports whether an API version ("group/version" or "group/version/Kind") is known.
func (v APIVersions) Has(apiVersion string) bool {
	for _, x := range v {
		if x == apiVersion {
			return true
		}
	}
	return false
}

// KubeVersion mirrors helm's chartutil.KubeVersion.
type KubeVersion struct {
	Version string
	Major   string
	Minor   string
}

func (k KubeVersion) String() string     { return k.Version }
func (k KubeVersion) GitVersion() string { return k.Version }

// Capabilities mirrors helm's chartutil.Capabilities.
type Capabilities struct {
	KubeVersion KubeVersion
	APIVersions APIVersions
}

// The built-in API versions `helm template` assumes without a cluster (a subset of
// client-go's scheme: every group/version a chart commonly renders).
var defaultAPIVersions = []string{
	"v1", "apps/v1", "batch/v1", "autoscaling/v1", "autoscaling/v2", "policy/v1",
	"networking.k8s.io/v1", "rbac.authorization.k8s.io/v1", "storage.k8s.io/v1",
	"coordination.k8s.io/v1", "discovery.k8s.io/v1", "admissionregistration.k8s.io/v1",
	"apiextensions.k8s.io/v1", "scheduling.k8s.io/v1", "certificates.k8s.io/v1",
	"events.k8s.io/v1", "node.k8s.io/v1",
}

const recursionMaxNums = 1000

func main() {
	var valueFiles, apiVersions listFlag
	chartDir := flag.String("chart", "", "chart directory (holds Chart.yaml, values.yaml, templates/)")
	outDir := flag.String("out", "", "directory for the rendered manifests (one file per template, all.yaml, NOTES.txt)")
	releaseName := flag.String("release-name", "scopegate", ".Release.Name")
	namespace := flag.String("namespace", "default", ".Release.Namespace")
	kubeVersion := flag.String("kube-version", "1.30.0", ".Capabilities.KubeVersion")
	dumpValues := flag.String("dump-values", "", "write the merged values as JSON to this file")
	flag.Var(&valueFiles, "values", "values file merged over values.yaml (repeatable, later wins)")
	flag.Var(&apiVersions, "api-versions", "extra API version for .Capabilities.APIVersions (repeatable)")
	flag.Parse()
	if *chartDir == "" || *outDir == "" {
		fmt.Fprintln(os.Stderr, "usage: render --chart DIR --out DIR [--values FILE]... [--release-name N] [--namespace NS] [--kube-version V] [--api-versions G/V]... [--dump-values FILE]")
		os.Exit(2)
	}
	if err := run(*chartDir, *outDir, *releaseName, *namespace, *kubeVersion, *dumpValues, valueFiles, apiVersions); err != nil {
		fmt.Fprintf(os.Stderr, "Error: %s\n", err)
		os.Exit(1)
	}
}

func run(chartDir, outDir, releaseName, namespace, kubeVersion, dumpValues string, valueFiles, extraAPIs []string) error {
	chartMeta, err := readYAMLFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return err
	}
	chart, err := chartMetadata(chartMeta)
	if err != nil {
		return err
	}
	name, _ := chart["Name"].(string)

	kv, err := semver.NewVersion(kubeVersion)
	if err != nil {
		return fmt.Errorf("--kube-version %q: %w", kubeVersion, err)
	}
	if c, ok := chart["KubeVersion"].(string); ok && c != "" {
		con, err := semver.NewConstraint(c)
		if err != nil {
			return fmt.Errorf("Chart.yaml kubeVersion %q: %w", c, err)
		}
		if !con.Check(kv) {
			return fmt.Errorf("chart requires kubeVersion: %s which is incompatible with Kubernetes v%s", c, kv)
		}
	}

	values, err := readYAMLFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		return err
	}
	for _, f := range valueFiles {
		over, err := readYAMLFile(f)
		if err != nil {
			return err
		}
		values = coalesce(over, values)
	}
	if dumpValues != "" {
		j, err := json.MarshalIndent(values, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(dumpValues, append(j, '\n'), 0o644); err != nil {
			return err
		}
	}

	caps := Capabilities{
		KubeVersion: KubeVersion{Version: "v" + kv.String(), Major: fmt.Sprint(kv.Major()), Minor: fmt.Sprint(kv.Minor())},
		APIVersions: append(append(APIVersions{}, defaultAPIVersions...), extraAPIs...),
	}
	top := map[string]interface{}{
		"Values": values,
		"Release": map[string]interface{}{
			"Name": releaseName, "Namespace": namespace, "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Chart":        chart,
		"Capabilities": caps,
	}

	// Every file under templates/, parsed into one set (so include reaches across files).
	tdir := filepath.Join(chartDir, "templates")
	var files []string
	err = filepath.Walk(tdir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if !info.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(files)

	root := template.New("gotpl")
	root.Option("missingkey=zero")
	includedNames := map[string]int{}
	funcs := funcMap()
	funcs["include"] = func(tname string, data interface{}) (string, error) {
		var buf strings.Builder
		if v, ok := includedNames[tname]; ok {
			if v > recursionMaxNums {
				return "", fmt.Errorf("rendering template has a nested reference name: %s: unable to execute template", tname)
			}
			includedNames[tname]++
		} else {
			includedNames[tname] = 1
		}
		err := root.ExecuteTemplate(&buf, tname, data)
		includedNames[tname]--
		return buf.String(), err
	}
	funcs["tpl"] = func(tpl string, vals interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", fmt.Errorf("cannot clone template: %w", err)
		}
		t.Option("missingkey=zero")
		t, err = t.New("tpl").Parse(tpl)
		if err != nil {
			return "", fmt.Errorf("cannot parse template %q: %w", tpl, err)
		}
		var buf strings.Builder
		if err := t.Execute(&buf, vals); err != nil {
			return "", fmt.Errorf("error during tpl function execution for %q: %w", tpl, err)
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	root.Funcs(funcs)

	names := map[string]string{} // template name -> file
	for _, f := range files {
		rel, _ := filepath.Rel(tdir, f)
		tname := filepath.ToSlash(filepath.Join(name, "templates", rel))
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if _, err := root.New(tname).Parse(string(b)); err != nil {
			return fmt.Errorf("parse error in %s: %w", tname, err)
		}
		names[tname] = f
	}

	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	var all bytes.Buffer
	var tnames []string
	for t := range names {
		tnames = append(tnames, t)
	}
	sort.Strings(tnames)
	rendered := 0
	for _, tname := range tnames {
		base := filepath.Base(tname)
		if strings.HasPrefix(base, "_") {
			continue
		}
		data := shallowCopy(top)
		data["Template"] = map[string]interface{}{"Name": tname, "BasePath": filepath.ToSlash(filepath.Join(name, "templates"))}
		var buf strings.Builder
		if err := root.ExecuteTemplate(&buf, tname, data); err != nil {
			return helmError(err)
		}
		out := strings.ReplaceAll(buf.String(), "<no value>", "")
		if base == "NOTES.txt" {
			if err := os.WriteFile(filepath.Join(outDir, "NOTES.txt"), []byte(out), 0o644); err != nil {
				return err
			}
			continue
		}
		if strings.TrimSpace(out) == "" {
			continue
		}
		if err := checkManifest(tname, out); err != nil {
			return err
		}
		rendered++
		if err := os.WriteFile(filepath.Join(outDir, base), []byte(out), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(&all, "---\n# Source: %s\n%s\n", tname, strings.TrimSpace(out))
	}
	if rendered == 0 {
		return errors.New("no manifest rendered")
	}
	return os.WriteFile(filepath.Join(outDir, "all.yaml"), all.Bytes(), 0o644)
}

// execErrRe matches text/template's `template: NAME:LINE:COL: executing "X" at <Y>: error
// calling fail: MESSAGE`; helm reports it as `execution error at (NAME:LINE:COL): MESSAGE`.
var execErrRe = regexp.MustCompile(`^template: (.*?): executing ".*?" at <.*?>: error calling (?:fail|required): (.*)$`)

func helmError(err error) error {
	// The innermost template error is what helm prints.
	msg := err.Error()
	if i := strings.LastIndex(msg, "template: "); i > 0 {
		msg = msg[i:]
	}
	if m := execErrRe.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("execution error at (%s): %s", m[1], m[2])
	}
	return errors.New(msg)
}

// checkManifest does what helm does with a rendered file: every document must be YAML and,
// unless empty, a Kubernetes object with apiVersion and kind.
func checkManifest(tname, out string) error {
	for i, doc := range splitDocs(out) {
		var obj map[string]interface{}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			return fmt.Errorf("YAML parse error on %s (document %d): %w", tname, i+1, err)
		}
		if obj == nil {
			continue
		}
		if _, ok := obj["apiVersion"]; !ok {
			return fmt.Errorf("%s (document %d): object has no apiVersion", tname, i+1)
		}
		if _, ok := obj["kind"]; !ok {
			return fmt.Errorf("%s (document %d): object has no kind", tname, i+1)
		}
	}
	return nil
}

var sepRe = regexp.MustCompile(`(?m)^---\s*$`)

func splitDocs(s string) []string {
	var docs []string
	for _, d := range sepRe.Split(s, -1) {
		if strings.TrimSpace(d) != "" {
			docs = append(docs, d)
		}
	}
	return docs
}

func shallowCopy(m map[string]interface{}) map[string]interface{} {
	c := make(map[string]interface{}, len(m)+1)
	for k, v := range m {
		c[k] = v
	}
	return c
}

// coalesce merges src (an override) over dst (the defaults) as helm coalesces values:
// maps merge key by key, anything else in src replaces, and a null in src deletes the key.
func coalesce(src, dst map[string]interface{}) map[string]interface{} {
	out := make(map[string]interface{}, len(dst))
	for k, v := range dst {
		out[k] = v
	}
	for k, v := range src {
		if v == nil {
			delete(out, k)
			continue
		}
		sm, sIsMap := v.(map[string]interface{})
		dm, dIsMap := out[k].(map[string]interface{})
		if sIsMap && dIsMap {
			out[k] = coalesce(sm, dm)
		} else {
			out[k] = v
		}
	}
	return out
}

// readYAMLFile reads YAML as helm does (sigs.k8s.io/yaml): converted to JSON, so maps have
// string keys and every number is a float64.
func readYAMLFile(path string) (map[string]interface{}, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m, err := fromYAML(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

func fromYAML(s string) (map[string]interface{}, error) {
	var raw interface{}
	if err := yaml.Unmarshal([]byte(s), &raw); err != nil {
		return nil, err
	}
	if raw == nil {
		return map[string]interface{}{}, nil
	}
	j, err := json.Marshal(jsonable(raw))
	if err != nil {
		return nil, err
	}
	var m map[string]interface{}
	if err := json.Unmarshal(j, &m); err != nil {
		return nil, fmt.Errorf("not a map: %w", err)
	}
	return m, nil
}

// jsonable turns yaml.v2's map[interface{}]interface{} into JSON-encodable maps.
func jsonable(v interface{}) interface{} {
	switch x := v.(type) {
	case map[interface{}]interface{}:
		m := make(map[string]interface{}, len(x))
		for k, e := range x {
			m[fmt.Sprint(k)] = jsonable(e)
		}
		return m
	case []interface{}:
		l := make([]interface{}, len(x))
		for i, e := range x {
			l[i] = jsonable(e)
		}
		return l
	default:
		return v
	}
}

// toYAML is helm's toYaml: sigs.k8s.io/yaml.Marshal (JSON first, then YAML with sorted
// keys), trailing newline removed; an error gives "".
func toYAML(v interface{}) string {
	j, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	var obj interface{}
	if err := yaml.Unmarshal(j, &obj); err != nil {
		return ""
	}
	b, err := yaml.Marshal(obj)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(b), "\n")
}

func funcMap() template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	extra := template.FuncMap{
		"toYaml": toYAML,
		"fromYaml": func(s string) map[string]interface{} {
			m, err := fromYAML(s)
			if err != nil {
				return map[string]interface{}{"Error": err.Error()}
			}
			return m
		},
		"toJson": func(v interface{}) string {
			b, err := json.Marshal(v)
			if err != nil {
				return ""
			}
			return string(b)
		},
		"fromJson": func(s string) map[string]interface{} {
			m := map[string]interface{}{}
			if err := json.Unmarshal([]byte(s), &m); err != nil {
				m["Error"] = err.Error()
			}
			return m
		},
		"required": func(warn string, val interface{}) (interface{}, error) {
			if val == nil {
				return val, errors.New(warn)
			} else if s, ok := val.(string); ok && s == "" {
				return val, errors.New(warn)
			}
			return val, nil
		},
		// `helm template` has no cluster: lookup always answers an empty map.
		"lookup": func(apiversion, resource, namespace, name string) (map[string]interface{}, error) {
			return map[string]interface{}{}, nil
		},
		// Placeholders replaced by closures in run (declared here so templates parse).
		"include": func(string, interface{}) string { return "not implemented" },
		"tpl":     func(string, interface{}) interface{} { return "not implemented" },
	}
	for k, v := range extra {
		f[k] = v
	}
	return f
}

// chartMetadata maps Chart.yaml keys onto helm's chart.Metadata field names.
func chartMetadata(m map[string]interface{}) (map[string]interface{}, error) {
	fields := map[string]string{
		"apiVersion": "APIVersion", "name": "Name", "version": "Version", "appVersion": "AppVersion",
		"description": "Description", "type": "Type", "kubeVersion": "KubeVersion", "home": "Home",
		"icon": "Icon", "keywords": "Keywords", "sources": "Sources", "maintainers": "Maintainers",
		"annotations": "Annotations", "deprecated": "Deprecated", "dependencies": "Dependencies",
	}
	out := map[string]interface{}{}
	for k, v := range m {
		f, ok := fields[k]
		if !ok {
			return nil, fmt.Errorf("Chart.yaml: unknown field %q", k)
		}
		out[f] = v
	}
	if out["APIVersion"] != "v2" {
		return nil, fmt.Errorf("Chart.yaml: apiVersion must be v2, is %v", out["APIVersion"])
	}
	for _, req := range []string{"Name", "Version"} {
		if s, _ := out[req].(string); s == "" {
			return nil, fmt.Errorf("Chart.yaml: %s is required", strings.ToLower(req))
		}
	}
	if _, err := semver.StrictNewVersion(fmt.Sprint(out["Version"])); err != nil {
		return nil, fmt.Errorf("Chart.yaml: version %v is not SemVer 2: %w", out["Version"], err)
	}
	return out, nil
}
