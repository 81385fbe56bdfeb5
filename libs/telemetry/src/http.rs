//! The one way modelperf builds an HTTP client.
//!
//! reqwest speaks TLS through rustls without a built-in crypto provider (the workspace enables
//! `rustls-no-provider`, so HTTPS to Slack or PagerDuty works without a second TLS stack); a
//! client built before a provider is installed would panic. [`client`] installs ring — the
//! provider async-nats already links — once per process, then hands out the builder.
//! `reqwest::Client::new`, `reqwest::Client::builder` and `reqwest::get` are disallowed by
//! `clippy.toml`; [`get`] stands in for the last.

/// Installs ring as the process's rustls provider unless one is installed already.
pub fn install_tls_provider() {
    // An error means a provider is already installed, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A reqwest client builder that is safe to `build()`.
#[allow(clippy::disallowed_methods)]
pub fn client() -> reqwest::ClientBuilder {
    install_tls_provider();
    reqwest::Client::builder()
}

/// A one-off GET (probes, scrapes, tests), the `reqwest::get` that cannot panic.
pub async fn get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    client().build()?.get(url).send().await
}

#[cfg(test)]
mod tests {
    #[test]
    fn builds_a_client_that_accepts_https_urls() {
        let http = super::client().build().expect("client");
        // Building the request checks the URL scheme against the TLS support compiled in.
        let request = http.get("https://example.invalid/").build().expect("https request");
        assert_eq!(request.url().scheme(), "https");
    }
}
