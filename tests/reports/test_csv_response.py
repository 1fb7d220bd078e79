"""``web.csv_response``: the one way every CSV export is sent (calls, course usage, reports, finance, audit)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

from flask import Flask

from portal.web import CSV_ROWS_PER_CHUNK, csv_response


def _send(rows, filename: str = "orders.csv", header=("id", "name", "net_eur")):
    app = Flask(__name__)
    with app.test_request_context("/finance/orders.csv"):
        response = csv_response(filename, list(header), rows)
        body = b"".join(response.iter_encoded())
    return response, body


def test_a_csv_is_utf8_with_crlf_lines_a_header_and_an_attachment_name() -> None:
    response, body = _send([[1, "Łódź University", "12.50"], [2, "Tartu Ülikool", None]])
    assert body == "id,name,net_eur\r\n1,Łódź University,12.50\r\n2,Tartu Ülikool,\r\n".encode()
    assert response.content_type == "text/csv; charset=utf-8"
    assert response.headers["Content-Disposition"] == 'attachment; filename="orders.csv"'
    assert response.is_streamed


def test_numbers_stay_numbers_and_formulas_are_defused() -> None:
    _response, body = _send(
        [[3, "=HYPERLINK(1)", "-75.00"], [-4, "-2+3", "+1"], [5, "@SUM(A1)", "'=kept as it was"]],
    )
    rows = list(csv.reader(io.StringIO(body.decode())))
    assert rows[1:] == [
        ["3", "'=HYPERLINK(1)", "-75.00"],
        ["-4", "'-2+3", "+1"],
        ["5", "'@SUM(A1)", "'=kept as it was"],
    ]


def test_many_rows_are_sent_in_chunks_with_the_same_bytes_as_one_pass_of_the_csv_writer() -> None:
    rows = [[n, f"project {n}", f"{n}.00"] for n in range(2 * CSV_ROWS_PER_CHUNK + 7)]
    expected = io.StringIO()
    writer = csv.writer(expected, lineterminator="\r\n")
    writer.writerow(["id", "name", "net_eur"])
    writer.writerows(rows)
    app = Flask(__name__)
    with app.test_request_context("/"):
        chunks = list(csv_response("big.csv", ["id", "name", "net_eur"], rows).iter_encoded())
    assert len(chunks) == 3
    assert b"".join(chunks) == expected.getvalue().encode()


def test_rows_from_a_generator_are_read_only_while_the_response_is_sent() -> None:
    read: list[int] = []

    def batches() -> Iterator[list[object]]:
        for n in range(3):
            read.append(n)
            yield [n, "row", "1.0"]

    app = Flask(__name__)
    with app.test_request_context("/"):
        response = csv_response("lazy.csv", ["id", "name", "net_eur"], batches())
        assert read == []
        body = b"".join(response.iter_encoded())
    assert read == [0, 1, 2]
    assert body.count(b"\r\n") == 4


def test_a_name_beyond_ascii_goes_as_rfc_6266_filename_star_with_an_ascii_fallback() -> None:
    response, _body = _send([], filename="kurs-Łódź.csv")
    assert response.headers["Content-Disposition"] == (
        "attachment; filename=\"kurs-__d_.csv\"; filename*=UTF-8''kurs-%C5%81%C3%B3d%C5%BA.csv"
    )
