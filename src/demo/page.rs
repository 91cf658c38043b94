//! The page the demo backend serves at `/`: who answered, from which host.

/// The machine's name for the page; never fails, since a missing name is no reason to refuse
/// to serve.
pub(super) fn hostname() -> String {
    sysinfo::System::host_name()
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// The greeting page. The `data:,` icon stops browsers from requesting `/favicon.ico`, which
/// would otherwise be a second request per page view landing on some other backend.
pub(super) fn render_page(name: &str, host: &str, id: &str) -> String {
    format!(
        "<!doctype html>\n\
         <html><head><meta charset=\"utf-8\"><title>ballast demo</title>\
         <link rel=\"icon\" href=\"data:,\"></head>\n\
         <body><h1>Hello {}!</h1>\n<p>Host: {}</p>\n<p>This is from {}</p></body></html>\n",
        html_escape(name),
        html_escape(host),
        html_escape(id)
    )
}

pub(super) fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
