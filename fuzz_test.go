package edgelimit

import (
	"strings"
	"testing"
)

// FuzzCaddyfile feeds edge_limit blocks to the Caddyfile adapter and then
// to provisioning: any input must give a config or an error, never a panic
// or a hang.
func FuzzCaddyfile(f *testing.F) {
	seeds := []string{
		"limit a {\n\trate 5/1m\n}",
		"limit a {\n\tkey {header.X} {client_ip} lit\n\ttoken_bucket 3 1/1s\n}",
		"limit a {\n\trate 5/1m\n\twindow sliding\n\tsplit 10s\n}",
		"limit a {\n\tgcra 10/1s burst 3\n}",
		"limit a {\n\tquota 5 per month at 06:00 in Europe/Paris\n}",
		"quota q {\n\tlimit 5 per day\n\treset 00:00 UTC\n\texempt a b\n}",
		"quota q {\n\tlimit 5 per 90s aligned\n}",
		"limit a {\n\ttier {t} {\n\t\tA rate 5/1m\n\t\tB rate 9/1m\n\t\tdefault A\n\t}\n}",
		"limit a {\n\trate 5/1m\n\tstatus 420\n\tbody `{\"e\":\"{edge_limit.name}\"}`\n}\nheaders both time",
		"limit a {\n\trate 0/0\n}",
		"limit a {\n\trate 5/-1m\n}",
		"limit a {\n\ttoken_bucket 9223372036854775807 9223372036854775807/1ns\n}",
		"limit {\n}",
		"use a b c",
		"limit a",
		"storage memory {\n\tmax_keys 1\n}",
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, block string) {
		if strings.Contains(block, "import") || strings.Contains(block, "{$") {
			t.Skip("file imports and environment reads are not the parser's input")
		}
		body := ":8080 {\n\tedge_limit {\n" + block + "\n\t}\n\trespond ok\n}\n"
		cfg, err := adapt(t, body)
		if err != nil {
			return
		}
		for _, h := range handlersOf(t, cfg) {
			_ = validateHandler(t, &h)
		}
	})
}
