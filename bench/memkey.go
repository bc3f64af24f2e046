package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// bytesPerKey runs storage's BenchmarkMemoryBytesPerKey (1,000,000 keys
// inserted into a memory store, per algorithm, heap measured with
// runtime.MemStats) and returns its bytes/key per algorithm, in order.
func bytesPerKey(ctx context.Context, root string) ([]algoBytes, string, error) {
	cmd := exec.CommandContext(ctx, "go", "test", "-run", "^$", "-bench", "^BenchmarkMemoryBytesPerKey$",
		"-benchtime", "1x", "-count", "1", "./storage")
	cmd.Dir = root
	cmd.Env = os.Environ()
	// go test runs the test binary as its child: stop both on Ctrl-C.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, string(out), fmt.Errorf("go test -bench BenchmarkMemoryBytesPerKey: %v\n%s", err, out)
	}
	res := parseBytesPerKey(string(out))
	if len(res) == 0 {
		return nil, string(out), fmt.Errorf("no bytes/key in:\n%s", out)
	}
	return res, string(out), nil
}

type algoBytes struct {
	Algorithm   string  `json:"algorithm"`
	BytesPerKey float64 `json:"bytes_per_key"`
}

var benchLine = regexp.MustCompile(`(?m)^BenchmarkMemoryBytesPerKey/(\S+?)(?:-\d+)?\s+\d+\s+.*?([\d.]+) bytes/key`)

func parseBytesPerKey(out string) []algoBytes {
	var res []algoBytes
	for _, m := range benchLine.FindAllStringSubmatch(out, -1) {
		f, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			continue
		}
		res = append(res, algoBytes{Algorithm: strings.TrimSpace(m[1]), BytesPerKey: f})
	}
	return res
}
