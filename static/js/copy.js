// "Copy" buttons: <button data-copy-from="ID" hidden> copies the text of the element ID to the clipboard and
// says so in its own label for a moment. Hidden without JavaScript (the text stays selectable).
document.querySelectorAll("button[data-copy-from]").forEach((button) => {
  const source = document.getElementById(button.dataset.copyFrom);
  if (!source || !navigator.clipboard) return;
  const label = button.textContent;
  button.hidden = false;
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(source.textContent.trim());
      button.textContent = button.dataset.copied || "Copied";
    } catch {
      button.textContent = button.dataset.failed || "Select the link and copy it";
    }
    setTimeout(() => { button.textContent = label; }, 3000);
  });
});
