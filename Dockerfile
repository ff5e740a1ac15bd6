# Stub: the reliability issue completes and verifies this image (CPU torch wheel, Chromium for export).
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt
COPY . .
EXPOSE 8501
CMD ["streamlit", "run", "dashboard/app.py", "--server.headless=true", "--server.address=0.0.0.0"]
