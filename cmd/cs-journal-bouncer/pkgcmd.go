package main

import (
	"io"
	"os"
)

// packagedConfigPath is the config the Debian package installs, and the
// one its unit passes with -c.
const packagedConfigPath = "/etc/crowdsec/bouncers/cs-journal-bouncer.yaml"

// defaultConfigPath is the packaged config when it is installed, else
// crowdsec-firewall-bouncer's, which this bouncer reads unchanged: the
// operator commands then find the running service's config without -c.
func defaultConfigPath() string {
	if _, err := os.Stat(packagedConfigPath); err == nil {
		return packagedConfigPath
	}
	return upstreamConfigPath
}

// isPackageCommand reports whether arg is one of the commands the Debian
// package's maintainer scripts run.
func isPackageCommand(arg string) bool { return arg == "setup" || arg == "cleanup" }

// runPackageCommand runs `setup` (postinst) or `cleanup` (prerm remove).
func runPackageCommand(args []string, cfgPath string, stdout, stderr io.Writer) int {
	if args[0] == "setup" {
		return runSetup(args[1:], cfgPath, stdout, stderr)
	}
	return runCleanup(args[1:], cfgPath, stdout, stderr)
}
