# Stub: the reliability issue completes and verifies this image (CPU torch wheel, Chromium for export).
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt
COPY . .
RUN pip install --no-cache-dir --no-deps .
EXPOSE 8501
CMD ["dpsat", "dashboard", "--address", "0.0.0.0"]
