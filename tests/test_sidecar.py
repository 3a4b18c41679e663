"""Sidecar files: columns and synonyms, matching rows to slides, and every bad row reported by line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slidebank.catalog.records import SlideDescription
from slidebank.ingest.sidecar import SidecarError, load_sidecar

pytestmark = pytest.mark.no_database  # opens no node's catalog: the PostgreSQL pass leaves it out

def write(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(SidecarError) as raised:
        load_sidecar(path)
    assert str(raised.value) == "\n".join(raised.value.problems)
    return raised.value.problems


def test_csv_with_synonyms_bom_and_blank_lines(tmp_path: Path) -> None:
    sidecar = tmp_path / "metadata.csv"
    sidecar.write_bytes(
        "\ufeffFile,Patient,Animal Species,Organ,Staining,Diagnose,sex,age,slide_id\n"
        "a.svs,PAT-1,human,breast,H&E,invasive ductal carcinoma,F,P54Y,HOSP-1\n"
        "\n"
        'sub/b.tiff,RAT-7,rat,liver,PAS,"necrosis, focal",male,p10w,\n'.encode()
    )
    table = load_sidecar(sidecar)
    assert len(table) == 2
    assert table.description_for(tmp_path / "a.svs", tmp_path) == SlideDescription(
        subject="PAT-1",
        species="human",
        anatomical_site="breast",
        stain="H&E",
        diagnosis="invasive ductal carcinoma",
        sex="F",
        age_at_extraction="P54Y",
        slide_id="HOSP-1",
    )
    described = table.description_for(tmp_path / "sub" / "b.tiff", tmp_path)
    assert described is not None
    assert (described.diagnosis, described.slide_id, described.subject) == ("necrosis, focal", None, "RAT-7")
    assert [row.line for row in table.rows] == [2, 4]


def test_semicolon_and_tab_separated_files(tmp_path: Path) -> None:
    semicolon = load_sidecar(write(tmp_path / "m.csv", "file;organ;stain\nx.svs;lung;H&E\n"))
    assert semicolon.description_for(Path("x.svs"), None) == SlideDescription(anatomical_site="lung", stain="H&E")
    tabbed = load_sidecar(write(tmp_path / "m.tsv", "file\torgan\nx.svs\tliver, left lobe\n"))
    assert tabbed.description_for(Path("x.svs"), None) == SlideDescription(anatomical_site="liver, left lobe")


def test_json_list_and_wrapped_forms(tmp_path: Path) -> None:
    rows = [{"file": "a.svs", "species": "mouse", "age_at_extraction": "P8W"}, {"file": "b.svs", "block": 7}]
    plain = load_sidecar(write(tmp_path / "list.json", json.dumps(rows, indent=2)))
    wrapped = load_sidecar(write(tmp_path / "wrapped.json", json.dumps({"slides": rows})))
    for table in (plain, wrapped):
        assert table.description_for(Path("a.svs"), None) == SlideDescription(species="mouse", age_at_extraction="P8W")
        assert table.description_for(Path("b.svs"), None) == SlideDescription(block="7")
    assert [row.line for row in plain.rows] == [2, 7]


def test_matching_prefers_the_relative_path_then_the_base_name(tmp_path: Path) -> None:
    root = tmp_path / "incoming"
    table = load_sidecar(
        write(
            tmp_path / "meta.csv",
            "file,stain\n"
            "left/x.svs,H&E\n"
            "right/x.svs,PAS\n"
            "unique.ndpi,Giemsa\n"
            "./dots/./y.svs,Congo red\n"
            "case.mrxs,trichrome\n"
            "series-7,Ki-67\n"
            "other-index,Alcian blue\n",
        )
    )
    stain = lambda path, base=root: (table.description_for(path, base) or SlideDescription()).stain  # noqa: E731
    assert stain(root / "left" / "x.svs") == "H&E"
    assert stain(root / "right" / "x.svs") == "PAS"
    assert stain(root / "deep" / "down" / "unique.ndpi", None) == "Giemsa"  # base name when nothing else fits
    assert stain(root / "dots" / "y.svs") == "Congo red"
    assert stain(root / "case.mrxs") == "trichrome"
    assert stain(root / "series-7" / "IM0001.dcm") == "Ki-67"  # a DICOM folder names its series
    assert stain(root / "series-7" / "IM0001") == "Ki-67"
    assert stain(root / "other-index.mrxs") == "Alcian blue"  # an MRXS data folder names the slide
    assert table.description_for(root / "unknown.svs", root) is None
    with pytest.raises(SidecarError, match="matches several rows"):
        table.description_for(tmp_path / "elsewhere" / "x.svs", None)


def test_pixel_size_column_is_read_in_micrometres_per_pixel(tmp_path: Path) -> None:
    """`mpp` (or µm/px, microns_per_pixel…) is for slides whose file does not say; a decimal comma,
    as European spreadsheets write it, is a decimal point."""
    table = load_sidecar(write(tmp_path / "m.csv", "file,µm/px,stain\na.svs,0.2527,H&E\nb.svs,,PAS\n"))
    assert table.description_for(Path("a.svs"), None) == SlideDescription(mpp=0.2527, stain="H&E")
    assert table.description_for(Path("b.svs"), None) == SlideDescription(stain="PAS")
    european = load_sidecar(write(tmp_path / "e.csv", "file;microns per pixel\nc.svs;0,5\n"))
    assert european.description_for(Path("c.svs"), None) == SlideDescription(mpp=0.5)
    as_json = load_sidecar(write(tmp_path / "j.json", json.dumps([{"file": "d.svs", "mpp": 0.25}])))
    assert as_json.description_for(Path("d.svs"), None) == SlideDescription(mpp=0.25)


def test_impossible_pixel_sizes_are_reported_with_their_line(tmp_path: Path) -> None:
    rows = "z1.svs,0\nz2.svs,-0.25\nz3.svs,abc\nz4.svs,250\nz5.svs,nan\nok.svs,0.5\n"
    sidecar = write(tmp_path / "m.csv", "file,mpp\n" + rows)
    sane = "is not a pixel size: give µm per pixel between 0.05 and 100 (e.g. 0.25 for a 40× scan)"
    assert problems(sidecar) == [
        f"m.csv line 2: mpp '0' {sane}",
        f"m.csv line 3: mpp '-0.25' {sane}",
        "m.csv line 4: mpp 'abc' is not a number (µm per pixel, e.g. 0.25)",
        f"m.csv line 5: mpp '250' {sane}",
        f"m.csv line 6: mpp 'nan' {sane}",
    ]


def test_sidecar_next_to_the_slides_matches_without_an_input_folder(tmp_path: Path) -> None:
    table = load_sidecar(write(tmp_path / "batch" / "meta.csv", "file,organ\nsub/a.svs,kidney\nb/a.svs,liver\n"))
    assert table.description_for(tmp_path / "batch" / "sub" / "a.svs", None) == SlideDescription(
        anatomical_site="kidney"
    )


def test_unknown_species_and_other_free_text_are_accepted(tmp_path: Path) -> None:
    table = load_sidecar(write(tmp_path / "m.csv", "file,species,organ,stain\nz.svs,Danio rerio,gill,Mystery blue\n"))
    assert table.description_for(Path("z.svs"), None) == SlideDescription(
        species="Danio rerio", anatomical_site="gill", stain="Mystery blue"
    )


def test_header_only_sidecar_has_no_rows(tmp_path: Path) -> None:
    assert len(load_sidecar(write(tmp_path / "m.csv", "file,organ\n"))) == 0


def test_every_bad_csv_row_is_reported_with_its_line(tmp_path: Path) -> None:
    sidecar = write(
        tmp_path / "metadata.csv",
        "file,sex,slide_id,age_at_extraction,diagnosis\n"  # line 1
        "ok.svs,female,OK-1,P3Y,fine\n"  # line 2
        "a.svs,male,,,\n"  # line 3
        "b.svs,x,,,\n"  # line 4
        "c.svs,,a/b,,\n"  # line 5
        "d.svs,,,54 years,\n"  # line 6
        "a.svs,,,,\n"  # line 7
        "e.svs,,OK-1,,\n"  # line 8
        ",female,,,\n"  # line 9
        'f.svs,,,,"two\nlines"\n'  # lines 10-11
        "g.svs,,,,,extra\n"  # line 12
        "h.svs,unknown,,,\n",  # line 13: fine
    )
    assert problems(sidecar) == [
        "metadata.csv line 4: unknown sex 'x'; expected one of female, male, unknown",
        "metadata.csv line 5: slide_id 'a/b' is not a valid identifier "
        "(1–64 letters, digits, '.', '_' or '-', starting with a letter or digit)",
        "metadata.csv line 6: age_at_extraction '54 years' is not an ISO 8601 duration such as P54Y, P10W or P3M",
        "metadata.csv line 7: duplicate file 'a.svs' (first on line 3)",
        "metadata.csv line 8: duplicate slide_id 'OK-1' (first on line 2)",
        "metadata.csv line 9: no file named; every row needs the slide's file or folder name",
        "metadata.csv line 12: 6 values but the header names 5 columns",
    ]


def test_bad_columns_are_reported_on_line_1(tmp_path: Path) -> None:
    found = problems(write(tmp_path / "m.csv", "filename,colour,organ,anatomical_site\nx.svs,red,liver,liver\n"))
    assert found[0].startswith("m.csv line 1: unknown column 'colour'; known columns: file, dataset")
    assert found[1] == "m.csv line 1: columns 'organ' and 'anatomical_site' both give anatomical_site"
    assert problems(write(tmp_path / "n.csv", "organ\nliver\n"))[0] == (
        "n.csv line 1: no 'file' column naming each slide's file or folder"
    )
    assert problems(write(tmp_path / "e.csv", "")) == [
        "e.csv line 1: expected a header row naming the columns (file, …)"
    ]


def test_values_too_long_or_with_control_characters(tmp_path: Path) -> None:
    found = problems(write(tmp_path / "m.csv", f"file,organ,case\nx.svs,{'l' * 300},ok\ny.svs,liver,bad\x07\n"))
    assert found == [
        "m.csv line 2: anatomical_site is too long (300 characters; at most 255)",
        "m.csv line 3: case contains control characters",
    ]


def test_bad_json_items_are_reported_by_index_and_line(tmp_path: Path) -> None:
    sidecar = write(
        tmp_path / "metadata.json",
        '{"slides": [\n'  # line 1
        '  {"file": "a.svs", "sex": "m"},\n'  # line 2: fine
        '  {"file": "b.svs",\n'  # line 3
        '   "sex": "q", "colour": 1},\n'  # line 4
        "  3,\n"  # line 5
        '  {"file": "a.svs", "block": ["A", "B"]}\n'  # line 6
        "]}\n",
    )
    assert problems(sidecar) == [
        "metadata.json slides[1] (line 3): unknown column 'colour'; known columns: file, dataset, subject, species, "
        "sex, age_at_extraction, case, specimen, anatomical_site, specimen_type, fixation_type, block, "
        "block_preparation, slide, stain, diagnosis, slide_id, mpp",
        "metadata.json slides[1] (line 3): unknown sex 'q'; expected one of female, male, unknown",
        "metadata.json slides[2] (line 5): expected an object with a 'file' key",
        "metadata.json slides[3] (line 6): 'block' must be text",
        "metadata.json slides[3] (line 6): duplicate file 'a.svs' (first on slides[0] (line 2))",
    ]


def test_malformed_json_points_at_the_line(tmp_path: Path) -> None:
    assert problems(write(tmp_path / "m.json", '[\n  {"file": "a.svs"},\n  {"file": }\n]')) == [
        "m.json line 3: invalid JSON: Expecting value"
    ]
    assert problems(write(tmp_path / "w.json", '{"rows": []}'))[0].startswith("w.json line 1: expected a list")


def test_not_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("file,organ\na.svs,foie\nb.svs,r\xe9n\n".encode("latin-1"))
    assert problems(path) == ["latin1.csv line 3: not UTF-8 text; save the file as UTF-8"]
