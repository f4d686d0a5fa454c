package config

import (
	"fmt"
	"strings"

	"github.com/spf13/viper"
)

// carriedSections are upstream sections this bouncer does not read yet but
// must keep when a file is migrated into another: a migrated nftables
// setup has to keep its table, chain and hook names.
var carriedSections = map[string]bool{"nftables": true, "nftables_hooks": true}

// Settings reads path and, if present, path+".local" merged over it, the
// way Load does, and returns the merged values of every key Load reads
// (plus upstream's nftables sections) as viper decoded them: keys
// lower-cased, aliases renamed, nested sections as maps. Unlike Load it
// does not validate, and the api_key value is NOT masked: it exists to
// carry a working configuration into a new file (the package's migration
// from crowdsec-firewall-bouncer). No environment variable is expanded, so
// a `${API_KEY}` reference is carried as written (see Unexpanded).
func Settings(path string) (map[string]any, error) {
	none := func(string) (string, bool) { return "", false }
	layers, err := readLayers(path, none)
	if err != nil {
		return nil, err
	}
	v := viper.New()
	for _, l := range layers {
		if err := resolveAliases(l.settings); err != nil {
			return nil, fmt.Errorf("config %s: %w", l.path, err)
		}
		if err := v.MergeConfigMap(l.settings); err != nil {
			return nil, fmt.Errorf("merge config %s: %w", l.path, err)
		}
	}
	out := map[string]any{}
	for k, val := range v.AllSettings() {
		_, section := sectionKeys[k]
		if knownKeys[k] || section || carriedSections[k] {
			out[k] = val
		}
	}
	return out, nil
}

// Unexpanded reports whether s still holds a `$NAME` or `${NAME}`
// reference: such a value only works where that variable is set, which a
// systemd service's environment normally is not.
func Unexpanded(s string) bool {
	_, unset := expand(s, func(string) (string, bool) { return "", false })
	return len(unset) > 0 && strings.Contains(s, "$")
}
