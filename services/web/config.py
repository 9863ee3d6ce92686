"""The dashboard's settings (pydantic): flags of `obsbus serve dashboard` override them, and
``OBSBUS_DASHBOARD_*`` set them for the dashboard `obsbus up` starts."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DashboardSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OBSBUS_DASHBOARD_")

    host: str = "127.0.0.1"  # 0.0.0.0 to serve the control room's other machines
    port: int = Field(8642, ge=0, le=65535)  # 0: any free port (the status file says which)
    hours: float = Field(12.0, gt=0)  # the window the page shows
    quiet_s: float = Field(120.0, gt=0)  # an incomplete exposure quiet this long is flagged
    # Scheduling priority given up (os.nice): watching must not slow ingest on a busy host.
    nice: int = Field(10, ge=0, le=19)
