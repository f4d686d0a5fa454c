package lapi

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/crowdsecurity/crowdsec/pkg/models"
)

// BenchmarkNormalize100k normalizes a blocklist-sized startup response:
// 100k Ip decisions with one origin and scenario (the journal's batch size).
func BenchmarkNormalize100k(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"deleted":null,"new":[`)
	for i := range 100_000 {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"duration":"23h59m58.5s","id":%d,"origin":"lists","scenario":"lists:firehol_level1","scope":"Ip","type":"ban","value":"198.18.%d.%d"}`,
			i, i/256%256, i%256)
	}
	sb.WriteString(`]}`)
	var resp models.DecisionsStreamResponse
	if err := json.Unmarshal([]byte(sb.String()), &resp); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		batch, rej := Normalize(&resp, NormalizeOptions{}, testNow)
		if len(batch.New) != 100_000 || len(rej) != 0 {
			b.Fatalf("kept %d rejected %d", len(batch.New), len(rej))
		}
	}
}
