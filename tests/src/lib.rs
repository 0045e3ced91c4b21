//! End-to-end and architecture tests of weir. The platform-level suites (whole `weir serve` on
//! loopback, driven by the typed client) land here with the gateway; today it holds the checks
//! that keep the crate layering and the Azure source compatibility honest.
