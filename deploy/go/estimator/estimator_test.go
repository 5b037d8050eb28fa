package estimator

import (
	"crypto/sha256"
	"encoding/hex"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// The cross-check against onnxruntime: tests/test_go_inference.py exports real models, runs
// them in onnxruntime on held-out rows and sets VMPOWER_GO_CASES to the cases file.
type goldenCase struct {
	ModelDir string               `json:"model_dir"`
	Version  string               `json:"version"`
	Zones    []string             `json:"zones"`
	Rows     []map[string]float64 `json:"rows"`
	Watts    []map[string]float64 `json:"watts"`
}

const maxDiffWatts = 1e-6

func TestMatchesOnnxruntime(t *testing.T) {
	path := os.Getenv("VMPOWER_GO_CASES")
	if path == "" {
		t.Skip("VMPOWER_GO_CASES not set (tests/test_go_inference.py sets it)")
	}
	var cases []goldenCase
	if err := readJSON(path, &cases); err != nil {
		t.Fatal(err)
	}
	if len(cases) == 0 {
		t.Fatal("no cases")
	}
	for _, c := range cases {
		e := New()
		if err := e.LoadModels(c.ModelDir); err != nil {
			t.Fatalf("%s: %v", c.ModelDir, err)
		}
		if e.GetModelVersion() != c.Version || strings.Join(e.GetSupportedZones(), ",") != strings.Join(c.Zones, ",") {
			t.Fatalf("%s: version %s zones %v, want %s %v", c.ModelDir, e.GetModelVersion(), e.GetSupportedZones(), c.Version, c.Zones)
		}
		worst := 0.0
		for i, row := range c.Rows {
			got, err := e.EstimatePower(row)
			if err != nil {
				t.Fatalf("%s row %d: %v", c.ModelDir, i, err)
			}
			for zone, want := range c.Watts[i] {
				worst = math.Max(worst, math.Abs(got.NodeCPUWatts[zone]-want))
			}
		}
		if worst > maxDiffWatts {
			t.Errorf("%s: max |Go - onnxruntime| = %g W over %d rows", c.ModelDir, worst, len(c.Rows))
		}
		t.Logf("%s: %d rows, max |Go - onnxruntime| = %g W", filepath.Base(c.ModelDir), len(c.Rows), worst)
	}
}

// writeModel writes a model directory with a valid manifest.
func writeModel(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	names := make([]string, 0, len(files))
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	sort.Strings(names)
	var manifest strings.Builder
	for _, name := range names {
		sum := sha256.Sum256([]byte(files[name]))
		manifest.WriteString(hex.EncodeToString(sum[:]) + "  " + name + "\n")
	}
	if err := os.WriteFile(filepath.Join(dir, manifestFile), []byte(manifest.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

const smallMeta = `{"model_name": "t", "zones": ["package"], "features": ["a", "b"],
 "training_data": {"feature_ranges": {"a": {"min": 0, "max": 10}, "b": {"min": 0, "max": 1}}}}`

// One stump on feature b (scaled: (b - 1) / 2 <= 0 -> 5 W, else 7 W) plus a base of 10 W.
const smallTrees = `{"format": "vmpower-trees/1", "model_name": "t", "features": ["a", "b"], "zones": {"package":
 {"mean": [0, 1], "scale": [1, 2], "base_value": 10, "trees": [{"feature": [1, 0, 0], "threshold": [0, 0, 0],
  "mode": ["LEQ", "LEAF", "LEAF"], "true": [1, 0, 0], "false": [2, 0, 0], "missing_true": [1, 0, 0],
  "leaf": [0, 5, 7]}]}}}`

func TestTreesByHand(t *testing.T) {
	e := New()
	if err := e.LoadModels(writeModel(t, map[string]string{"metadata.json": smallMeta, "trees.json": smallTrees})); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		b, want, conf float64
	}{{0.5, 15, 1}, {1, 15, 1}, {3, 17, 0.5}, {math.NaN(), 15, 0.5}} {
		got, err := e.EstimatePower(VMFeatures{"a": 1, "b": c.b})
		if err != nil {
			t.Fatal(err)
		}
		if got.NodeCPUWatts["package"] != c.want || got.Confidence != c.conf {
			t.Errorf("b=%v: %v W confidence %v, want %v W %v", c.b, got.NodeCPUWatts["package"], got.Confidence, c.want, c.conf)
		}
	}
	if _, err := e.EstimatePower(VMFeatures{"a": 1}); err == nil || !strings.Contains(err.Error(), `"b" is missing`) {
		t.Errorf("a missing tree input must be an error, got %v", err)
	}
}

func TestKeplerWeightFormula(t *testing.T) {
	weights := `{"model_name": "t", "package": {"All_Weights": {"Bias_Weight": 2, "Categorical_Variables": {},
	 "Numerical_Variables": {"cpu_cycles": {"scale": 4, "mean": 0, "variance": 16, "weight": 3},
	 "cache_miss": {"scale": 0, "mean": 0, "variance": 0, "weight": 9}}}}}`
	e := New()
	if err := e.LoadModels(writeModel(t, map[string]string{"metadata.json": smallMeta, "weight.json": weights})); err != nil {
		t.Fatal(err)
	}
	// 2 + 8 / 4 * 3; the scale-0 term adds nothing; a missing input is 0 (Kepler's rule).
	got, err := e.EstimatePower(VMFeatures{"cpu_cycles": 8, "cache_miss": 5})
	if err != nil || got.NodeCPUWatts["package"] != 8 || got.Confidence != -1 {
		t.Fatalf("got %+v, %v", got, err)
	}
	if got, _ := e.EstimatePower(VMFeatures{}); got.NodeCPUWatts["package"] != 2 {
		t.Errorf("all inputs missing: %v W, want the bias 2", got.NodeCPUWatts["package"])
	}
}

func TestRefusals(t *testing.T) {
	good := map[string]string{"metadata.json": smallMeta, "trees.json": smallTrees}
	cases := map[string]func(dir string){
		"does not match its sha256": func(dir string) { os.WriteFile(filepath.Join(dir, "trees.json"), []byte("{}"), 0o600) },
		"not listed":                func(dir string) { os.WriteFile(filepath.Join(dir, "extra.py"), []byte("x"), 0o600) },
		"no manifest.sha256":        func(dir string) { os.Remove(filepath.Join(dir, manifestFile)) },
	}
	for want, damage := range cases {
		dir := writeModel(t, good)
		damage(dir)
		e := New()
		if err := e.LoadModels(dir); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v", want, err)
		}
	}
	knn := writeModel(t, map[string]string{"metadata.json": smallMeta, "package.onnx": "onnx bytes"})
	if err := New().LoadModels(knn); err == nil || !strings.Contains(err.Error(), "ONNX only") {
		t.Errorf("an ONNX-only model must be refused, got %v", err)
	}
	loop := strings.Replace(smallTrees, `"true": [1, 0, 0]`, `"true": [0, 0, 0]`, 1)
	if err := New().LoadModels(writeModel(t, map[string]string{"metadata.json": smallMeta, "trees.json": loop})); err == nil {
		t.Error("a tree whose child points back must be refused")
	}
	// A failed load keeps the loaded model.
	e := New()
	if err := e.LoadModels(writeModel(t, good)); err != nil {
		t.Fatal(err)
	}
	version := e.GetModelVersion()
	if err := e.LoadModels(knn); err == nil || e.GetModelVersion() != version {
		t.Error("a failed LoadModels must keep the previous model")
	}
}
