// Loaded (blocking) in <head> so a stored light/dark choice applies before
// the first paint: no flash of the other theme. app.js owns the toggle.
try {
  const theme = JSON.parse(localStorage.getItem('swapvisor.theme') || '"system"');
  if (theme === 'light' || theme === 'dark') document.documentElement.dataset.theme = theme;
} catch { /* storage unavailable: follow the system */ }
