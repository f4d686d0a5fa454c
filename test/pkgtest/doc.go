// Package pkgtest tests the Debian package the way a user meets it: a
// throwaway Debian 12 root booted with systemd as PID 1 in its own
// namespaces, Debian's crowdsec and crowdsec-firewall-bouncer running, and
// `apt install ./dist/cs-journal-bouncer_*.deb` migrating from it. The
// tests are in the _test.go files; they need root and skip in -short.
package pkgtest
