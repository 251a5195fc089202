//! Statement documents: a PDF 1.4 writer (text only, the standard Helvetica font, A4 pages, a
//! correct cross-reference table) and RFC 4180 CSV. Pure functions of already formatted text; no
//! network, no fonts to embed, no dependency.

use std::fmt::Write as _;

/// One statement line, formatted.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    /// `YYYY-MM-DD`.
    pub(crate) date: String,
    pub(crate) description: String,
    /// Signed, in major units (e.g. `-250.00`).
    pub(crate) amount: String,
    pub(crate) balance: String,
}

/// A statement, formatted for a document.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    /// Masked account number (`****1234`).
    pub(crate) account: String,
    pub(crate) currency: String,
    /// `YYYY-MM`.
    pub(crate) period: String,
    pub(crate) opening: String,
    pub(crate) closing: String,
    pub(crate) credits: String,
    pub(crate) debits: String,
    /// RFC 3339.
    pub(crate) generated: String,
    pub(crate) lines: Vec<Line>,
}

/// Lines of text per page after the page header.
const ROWS_PER_PAGE: usize = 48;

/// The statement as a PDF 1.4 document.
pub(crate) fn pdf(statement: &Statement) -> Vec<u8> {
    let mut pages: Vec<String> = Vec::new();
    let chunks: Vec<&[Line]> =
        if statement.lines.is_empty() { vec![&[]] } else { statement.lines.chunks(ROWS_PER_PAGE).collect() };
    let count = chunks.len();
    for (number, chunk) in chunks.into_iter().enumerate() {
        let mut content = String::new();
        let mut y = 800;
        text(&mut content, 50, y, 16, "bankmesh - Account statement");
        y -= 22;
        text(
            &mut content,
            50,
            y,
            10,
            &format!(
                "Account {}   Currency {}   Period {}",
                statement.account, statement.currency, statement.period
            ),
        );
        y -= 14;
        text(
            &mut content,
            50,
            y,
            10,
            &format!("Page {} of {count}   Generated {}", number + 1, statement.generated),
        );
        y -= 20;
        if number == 0 {
            text(
                &mut content,
                50,
                y,
                11,
                &format!("Opening balance: {} {}", statement.opening, statement.currency),
            );
            y -= 20;
        }
        for (x, heading) in [(50, "Date"), (120, "Description"), (390, "Amount"), (480, "Balance")] {
            text(&mut content, x, y, 10, heading);
        }
        y -= 14;
        for line in chunk {
            let description: String = line.description.chars().take(48).collect();
            text(&mut content, 50, y, 9, &line.date);
            text(&mut content, 120, y, 9, &description);
            text(&mut content, 390, y, 9, &line.amount);
            text(&mut content, 480, y, 9, &line.balance);
            y -= 13;
        }
        if number + 1 == count {
            y -= 10;
            text(
                &mut content,
                50,
                y,
                10,
                &format!("Total credits: {} {}", statement.credits, statement.currency),
            );
            y -= 14;
            text(
                &mut content,
                50,
                y,
                10,
                &format!("Total debits: {} {}", statement.debits, statement.currency),
            );
            y -= 18;
            text(
                &mut content,
                50,
                y,
                11,
                &format!("Closing balance: {} {}", statement.closing, statement.currency),
            );
        }
        pages.push(content);
    }
    write_pdf(&pages)
}

/// One text object at (`x`, `y`) in Helvetica of `size` points.
fn text(content: &mut String, x: i32, y: i32, size: u8, value: &str) {
    let _ = writeln!(content, "BT /F1 {size} Tf {x} {y} Td ({}) Tj ET", escape(value));
}

/// Assembles a PDF from page content streams: catalog (1), page tree (2), font (3), then a page
/// object and its content stream per page, the xref table with every object's byte offset, the
/// trailer.
fn write_pdf(pages: &[String]) -> Vec<u8> {
    let mut objects: Vec<Vec<u8>> = Vec::new();
    let kids: Vec<String> = (0..pages.len()).map(|i| format!("{} 0 R", 4 + 2 * i)).collect();
    objects.push(b"<< /Type /Catalog /Pages 2 0 R >>".to_vec());
    objects
        .push(format!("<< /Type /Pages /Kids [{}] /Count {} >>", kids.join(" "), pages.len()).into_bytes());
    objects
        .push(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".to_vec());
    for (i, content) in pages.iter().enumerate() {
        let contents = 5 + 2 * i;
        objects.push(
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] \
                 /Resources << /Font << /F1 3 0 R >> >> /Contents {contents} 0 R >>"
            )
            .into_bytes(),
        );
        let mut stream = format!("<< /Length {} >>\nstream\n", content.len()).into_bytes();
        stream.extend_from_slice(content.as_bytes());
        stream.extend_from_slice(b"\nendstream");
        objects.push(stream);
    }
    let mut out: Vec<u8> = b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n".to_vec();
    let mut offsets = Vec::with_capacity(objects.len());
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    let mut table = format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1);
    for offset in offsets {
        let _ = writeln!(table, "{offset:010} 00000 n ");
    }
    let _ =
        write!(table, "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1);
    out.extend_from_slice(table.as_bytes());
    out
}

/// A PDF literal string's content: `\`, `(` and `)` escaped; anything outside printable ASCII
/// becomes `?` (the standard fonts' encoding has no safe mapping for it without more work).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' | '(' | ')' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out
}

/// The statement as RFC 4180 CSV (UTF-8, CRLF): a summary block, then one row per line.
pub(crate) fn csv(statement: &Statement) -> Vec<u8> {
    let mut out = String::new();
    let mut row = |cells: &[&str]| {
        let cells: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    };
    row(&["account", "currency", "period", "opening_balance", "closing_balance"]);
    row(&[
        &statement.account,
        &statement.currency,
        &statement.period,
        &statement.opening,
        &statement.closing,
    ]);
    row(&["date", "description", "amount", "balance_after"]);
    for line in &statement.lines {
        row(&[&line.date, &line.description, &line.amount, &line.balance]);
    }
    out.into_bytes()
}

/// One CSV cell: quoted when needed; text that a spreadsheet would run as a formula gets a
/// leading apostrophe (numbers such as `-250.00` stay as they are).
fn csv_cell(value: &str) -> String {
    let numeric =
        !value.is_empty() && value.trim_start_matches('-').chars().all(|c| c.is_ascii_digit() || c == '.');
    let value = if !numeric && value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if value.contains([',', '"', '\r', '\n']) { format!("\"{}\"", value.replace('"', "\"\"")) } else { value }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(lines: usize) -> Statement {
        Statement {
            account: "****1234".into(),
            currency: "EUR".into(),
            period: "2026-10".into(),
            opening: "0.00".into(),
            closing: "750.00".into(),
            credits: "1000.00".into(),
            debits: "250.00".into(),
            generated: "2026-10-05T10:00:00Z".into(),
            lines: (0..lines)
                .map(|i| Line {
                    date: "2026-10-01".into(),
                    description: format!("line (#{i}) \\ ünïcode"),
                    amount: "-1.00".into(),
                    balance: "1.00".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn xref_offsets_point_at_their_objects_on_every_page() {
        let pdf = pdf(&sample(120));
        assert!(pdf.starts_with(b"%PDF-1.4\n"));
        let text = String::from_utf8_lossy(&pdf);
        let startxref: usize =
            text.rsplit("startxref\n").next().unwrap().lines().next().unwrap().parse().unwrap();
        assert!(pdf[startxref..].starts_with(b"xref\n"));
        // Offsets count bytes of the document (its binary comment makes the lossy text longer).
        let tail = String::from_utf8_lossy(&pdf[startxref..]);
        let entries: Vec<&str> = tail.lines().skip(3).take_while(|l| l.ends_with(" n ")).collect();
        assert_eq!(entries.len(), 3 + 2 * 3, "catalog, pages, font + 3 pages of 48 rows");
        for (i, entry) in entries.iter().enumerate() {
            let offset: usize = entry[..10].parse().unwrap();
            assert!(pdf[offset..].starts_with(format!("{} 0 obj", i + 1).as_bytes()));
        }
        assert!(text.contains("(Closing balance: 750.00 EUR) Tj"));
        assert!(text.contains("line \\(#0\\) \\\\ ?n?code"), "escaped and ASCII only");
    }

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(csv_cell("-250.00"), "-250.00");
        let csv = String::from_utf8(csv(&sample(1))).unwrap();
        assert!(csv.ends_with("2026-10-01,line (#0) \\ ünïcode,-1.00,1.00\r\n"));
    }
}
