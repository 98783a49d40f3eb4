"""Input validation for the web form, the API and the admin upload."""

from __future__ import annotations

import math
from typing import Any

from django import forms

from retrieval import selectors
from retrieval.models import Catalog


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("widget", MultipleFileInput())
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def clean(self, data: object, initial: object = None) -> list[object]:
        single = super().clean
        if isinstance(data, (list, tuple)):
            return [single(item, initial) for item in data]
        return [single(data, initial)]


def parse_bbox(raw: str) -> list[float] | None:
    raw = (raw or "").strip()
    if not raw:
        return None
    try:
        values = [float(v) for v in raw.replace(" ", ",").split(",") if v]
    except ValueError:
        raise forms.ValidationError("bbox must be four numbers: x1,y1,x2,y2.") from None
    if not all(math.isfinite(v) for v in values):
        raise forms.ValidationError("bbox must be four finite numbers (no nan or inf): x1,y1,x2,y2.")
    if len(values) != 4 or values[2] <= values[0] or values[3] <= values[1]:
        raise forms.ValidationError("bbox must be four numbers x1,y1,x2,y2 with x1 < x2 and y1 < y2.")
    return values


class SearchForm(forms.Form):
    image = forms.FileField(help_text="A photo of a landmark.")
    catalog = forms.ModelChoiceField(
        queryset=Catalog.objects.none(), to_field_name="name", required=False,
        help_text="Defaults to the only catalog, or the one named 'default'.",
        # The same answer for a private catalog as for an unknown one: names are not disclosed.
        error_messages={"invalid_choice": "No catalog with that name that you may search (private catalogs need a "
                        "sign-in or an API token)."},
    )  # fmt: skip
    top_k = forms.IntegerField(min_value=1, max_value=100, initial=10, required=False)
    bbox = forms.CharField(required=False, help_text="Optional region x1,y1,x2,y2 in query pixels.")

    def __init__(self, *args: Any, user: object = None, **kwargs: Any) -> None:
        """``user``: who searches (anonymous when None); only the catalogs they may search
        are offered and accepted (``selectors.catalogs_searchable``)."""
        super().__init__(*args, **kwargs)
        self.searchable = selectors.catalogs_searchable(user=user)
        self.fields["catalog"].queryset = self.searchable  # type: ignore[attr-defined]
        self.fields["image"].widget.attrs.update(accept="image/*")
        self.fields["bbox"].widget.attrs.update(autocomplete="off", placeholder="e.g. 120,40,860,610")

    def clean_bbox(self) -> list[float] | None:
        return parse_bbox(self.cleaned_data.get("bbox", ""))

    def clean_catalog(self) -> Catalog:
        catalog = self.cleaned_data.get("catalog")
        if catalog is not None:
            return catalog
        catalogs = list(self.searchable[:2])
        if len(catalogs) == 1:
            return catalogs[0]
        default = self.searchable.filter(name="default").first()
        if default is None:
            raise forms.ValidationError(
                "No catalog that you may search exists yet."
                if not catalogs
                else "Several catalogs exist: choose one with 'catalog'."
            )
        return default


class CatalogUploadForm(forms.Form):
    catalog = forms.ModelChoiceField(queryset=Catalog.objects.all(), required=False)
    new_catalog = forms.CharField(required=False, help_text="Or create a catalog with this name.")
    landmark = forms.CharField(required=False, max_length=200, help_text="Landmark shown in all these photos.")
    files = MultipleFileField(help_text="One or many photos (select several files).")

    def clean(self) -> dict[str, object]:
        cleaned = super().clean()
        if not cleaned.get("catalog") and not cleaned.get("new_catalog"):
            raise forms.ValidationError("Choose a catalog or name a new one.")
        return cleaned
