package estimator

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
)

const manifestFile = "manifest.sha256"

var manifestLine = regexp.MustCompile(`^([0-9a-f]{64})  ([^/\\]+)$`)

// verifyManifest checks every file of the model directory against manifest.sha256 (as
// vmpower's Python loader does: listed files present and unchanged, nothing unlisted) and
// returns the model version.
func verifyManifest(dir string) (string, error) {
	data, err := os.ReadFile(filepath.Join(dir, manifestFile))
	if err != nil {
		return "", fmt.Errorf("%s: no %s: cannot verify the model's integrity", dir, manifestFile)
	}
	listed := map[string]string{}
	scanner := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; scanner.Scan(); n++ {
		line := scanner.Text()
		if len(bytes.TrimSpace([]byte(line))) == 0 {
			continue
		}
		m := manifestLine.FindStringSubmatch(line)
		if m == nil {
			return "", fmt.Errorf("%s: %s line %d is malformed", dir, manifestFile, n)
		}
		listed[m[2]] = m[1]
	}
	for _, name := range sortedKeys(listed) {
		content, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return "", fmt.Errorf("%s: %s is listed in %s but missing", dir, name, manifestFile)
		}
		sum := sha256.Sum256(content)
		if hex.EncodeToString(sum[:]) != listed[name] {
			return "", fmt.Errorf("%s: %s does not match its sha256 in %s (file changed)", dir, name, manifestFile)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	for _, entry := range entries {
		if _, ok := listed[entry.Name()]; !ok && entry.Name() != manifestFile && entry.Name() != manifestFile+".sig" &&
			entry.Type().IsRegular() {
			return "", fmt.Errorf("%s: %s is not listed in %s (unexpected file)", dir, entry.Name(), manifestFile)
		}
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])[:12], nil
}
