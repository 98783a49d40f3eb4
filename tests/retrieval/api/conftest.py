"""API clients authenticated by token, as scripts use the API."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from rest_framework.authtoken.models import Token

from tests.conftest import encode, load_photo


def token_client(user: User) -> Client:
    token, _ = Token.objects.get_or_create(user=user)
    return Client(headers={"Authorization": f"Token {token.key}"})


@pytest.fixture
def staff_client(db: None) -> Client:
    return token_client(User.objects.create_user("curator", password="x", is_staff=True))


@pytest.fixture
def user_client(db: None) -> Client:
    """Signed in by token, not staff: reads everything, writes nothing."""
    return token_client(User.objects.create_user("reader", password="x"))


def photo_upload(name: str, fmt: str = "JPEG") -> SimpleUploadedFile:
    """A real photo (scikit-image's ``name``), encoded as an upload named after it."""
    suffix = {"JPEG": "jpg", "PNG": "png"}[fmt]
    stem = name.split(".")[0]
    return SimpleUploadedFile(f"{stem}.{suffix}", encode(load_photo(name), fmt), "application/octet-stream")
